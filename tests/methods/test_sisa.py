"""SISA (Bourtoule et al. 2021): the shard ensemble's statistics, its checkpoints, exact unlearning by
retraining only the shards that hold forget cells, the audit on an ensemble, and the workflow's jobs."""

import json
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scunlearn import ScunlearnError
from scunlearn.data.splits import Partition
from scunlearn.io import write_json, write_with_digest
from scunlearn.membership.attackers import feature_grad, feature_names, model_features
from scunlearn.methods import get_method, resolve_params
from scunlearn.methods.context import UnlearnContext
from scunlearn.methods.sisa import shard_seed, train_shard, train_shards
from scunlearn.runtime import seed_everything
from scunlearn.vae.checkpoints import load_checkpoint, save_checkpoint
from scunlearn.vae.model import VAEConfig, build_vae, cell_terms
from scunlearn.vae.shards import ShardEnsemble
from tests.conftest import tiny_audit_job
from tests.methods.test_methods import _toy as methods_toy

RECIPE = {"lr": 3e-3, "batch_size": 16, "max_epochs": 2, "kl_warmup_epochs": 1, "patience": 2}
CFG = VAEConfig(n_genes=40, hidden=[16], latent=3, dropout=0.1)


def _toy(n=160):
    _, X, part = methods_toy(n=n)
    return X, part, np.array([f"c{i}" for i in range(n)])


def _ensemble(S=3, seed=0):
    seed_everything(seed)
    return ShardEnsemble([build_vae(CFG) for _ in range(S)])


def _save_shards(tmp_path, X, names, train_rows, val_rows, S, seed=0):
    ens, shards, _ = train_shards(X, names, train_rows, val_rows, S, CFG, RECIPE, seed)
    save_checkpoint(ens, tmp_path / "shards.pt", {"seed": seed, "train": RECIPE})
    write_json({"shards": shards}, tmp_path / "shards.json")
    (tmp_path / "bench.tsv").write_text("s\tmax_rss\n12.5\t100\n")
    return ens, shards


def _context(tmp_path, X, part, names, S):
    inputs = {"shards": str(tmp_path / "shards.pt"), "shard_assignment": str(tmp_path / "shards.json"),
              "setup_benchmark": str(tmp_path / "bench.tsv"),
              "barcodes": {k: list(names[getattr(part, k)]) for k in ("forget", "retain", "validation")}}
    seed_everything(0)
    return UnlearnContext.build(build_vae(CFG), X, part, seed=0, params=resolve_params("sisa", {"shards": S}),
                                inputs=inputs)


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ the ensemble as a model


def test_ensemble_elbo_is_the_mean_of_the_shards_elbos_and_latents_are_concatenated():
    X, _, _ = _toy()
    ens = _ensemble(S=3)
    idx = np.arange(50)
    t = cell_terms(ens, X, idx, keep_mean=True)
    parts = [cell_terms(s, X, idx, keep_mean=True) for s in ens.shards]
    torch.testing.assert_close(t.elbo, torch.stack([p.elbo for p in parts]).mean(0))
    torch.testing.assert_close(t.nll, torch.stack([p.nll for p in parts]).mean(0))
    torch.testing.assert_close(t.mean, torch.stack([p.mean for p in parts]).mean(0))
    assert torch.equal(t.mu, torch.cat([p.mu for p in parts], 1)) and t.mu.shape == (50, 9)
    assert torch.equal(t.logvar, torch.cat([p.logvar for p in parts], 1))
    # the ELBO of the ensemble is not that of any shard (they differ), and encode/decode are consistent with terms
    assert not torch.allclose(t.elbo, parts[0].elbo)
    mu, _ = ens.eval().encode(X[:50])
    torch.testing.assert_close(ens.decode(mu, X[:50].sum(-1, keepdim=True)), t.mean)
    # the attack features are sized by cfg.latent = S x the shard's latent
    assert ens.cfg.latent == 9 and ens.cfg.n_genes == 40
    assert model_features(ens, X, idx).shape[1] == len(feature_names(ens.cfg.latent))
    # gradient features flow into every shard
    feature_grad(ens, X[:8]).sum().backward()
    assert all(s.mu.weight.grad is not None and s.mu.weight.grad.abs().sum() > 0 for s in ens.shards)


def test_checkpoints_round_trip_both_model_kinds(tmp_path):
    X, _, _ = _toy()
    ens = _ensemble(S=2)
    save_checkpoint(ens, tmp_path / "e.pt", {"seed": 3})
    back, meta = load_checkpoint(tmp_path / "e.pt")
    assert isinstance(back, ShardEnsemble) and len(back) == 2 and meta == {"seed": 3} and _same(back, ens)
    torch.testing.assert_close(cell_terms(back, X, np.arange(20)).elbo, cell_terms(ens, X, np.arange(20)).elbo)
    payload = torch.load(tmp_path / "e.pt", weights_only=True)
    assert payload["model_kind"] == "shard_ensemble"
    vae = build_vae(CFG)
    save_checkpoint(vae, tmp_path / "v.pt", {})
    back_vae, _ = load_checkpoint(tmp_path / "v.pt")
    assert type(back_vae).__name__ == "VAE" and _same(back_vae, vae)
    # a checkpoint written before model_kind existed is a VAE; an unknown kind is refused by name
    old = torch.load(tmp_path / "v.pt", weights_only=True)
    del old["model_kind"]
    write_with_digest(tmp_path / "old.pt", lambda p: torch.save(old, p))
    assert _same(load_checkpoint(tmp_path / "old.pt")[0], vae)
    old["model_kind"] = "mixture"
    write_with_digest(tmp_path / "bad.pt", lambda p: torch.save(old, p))
    with pytest.raises(ScunlearnError, match="unknown model_kind 'mixture'"):
        load_checkpoint(tmp_path / "bad.pt")


# ------------------------------------------------------------------ the method


def test_sisa_retrains_exactly_the_shards_holding_forget_cells(tmp_path):
    X, part, names = _toy()
    S = 4
    ens, shards = _save_shards(tmp_path, X, names, part.train, part.validation, S)
    assert sorted(b for c in shards for b in c) == sorted(names[part.train])  # a partition of train
    # forget cells taken from shards 1 and 3 only
    forget_bc = shards[1][:3] + shards[3][:2]
    forget = np.sort(np.flatnonzero(np.isin(names, forget_bc)))
    part = Partition(part.train, part.validation, part.audit, forget, np.setdiff1d(part.train, forget))
    ctx = _context(tmp_path, X, part, names, S)
    out = get_method("sisa").fn(ctx)
    assert ctx.report["sisa_shards"] == S and ctx.report["sisa_shards_retrained"] == 2
    assert ctx.report["setup_wall_s"] == 12.5
    for k in (0, 2):
        assert _same(out.shards[k], ens.shards[k]), k  # reused bit-identical
    for k in (1, 3):
        assert not _same(out.shards[k], ens.shards[k]), k
        # retrained from scratch on the shard minus its forget cells, same recipe and seed
        keep = [b for b in shards[k] if b not in forget_bc]
        ref, _ = train_shard(X, np.flatnonzero(np.isin(names, keep)), part.validation, CFG, RECIPE,
                             shard_seed(0, k))
        assert _same(out.shards[k], ref), k
    traj = ctx.trajectory.frame()
    assert list(traj["phase"]) == ["baseline", "retrain", "retrain", "final"]
    assert list(traj["shard"]) == [-1, 1, 3, -1] and list(traj["n_removed"].iloc[1:3]) == [3, 2]
    assert traj["forget_loss"].notna().all()
    # deterministic for a seed
    again = get_method("sisa").fn(_context(tmp_path, X, part, names, S))
    assert _same(out, again)


def test_retraining_a_shard_with_nothing_removed_reproduces_it(tmp_path):
    """The method's retraining recipe is the up-front one: same rows and seed give the same shard."""
    X, part, names = _toy()
    ens, shards = _save_shards(tmp_path, X, names, part.train, part.validation, 2)
    rows = np.flatnonzero(np.isin(names, shards[0]))
    Xc = torch.cat([X[rows], X[part.validation]])  # as the method lays out a shard's cells
    again, _ = train_shard(Xc, np.arange(len(rows)), np.arange(len(rows), len(Xc)), CFG, RECIPE, shard_seed(0, 0))
    assert _same(again, ens.shards[0])


def test_unlearning_cells_in_no_shard_changes_nothing(tmp_path):
    X, part, names = _toy()
    # shards over the retain cells only: the forget cells (rows 0-19) are in no shard
    ens, _ = _save_shards(tmp_path, X, names, part.retain, part.validation, 3)
    ctx = _context(tmp_path, X, part, names, 3)
    out = get_method("sisa").fn(ctx)
    assert _same(out, ens) and ctx.report["sisa_shards_retrained"] == 0
    assert list(ctx.trajectory.frame()["phase"]) == ["baseline", "final"]


def test_sisa_refuses_a_shard_count_other_than_its_parameter(tmp_path):
    X, part, names = _toy()
    _save_shards(tmp_path, X, names, part.train, part.validation, 2)
    with pytest.raises(ScunlearnError, match="params.shards is 3"):
        get_method("sisa").fn(_context(tmp_path, X, part, names, 3))


def test_registry_declares_the_extra_inputs_and_setup_cost_reaches_the_summary():
    from scunlearn.audit.verdict import add_verdicts

    assert get_method("sisa").needs == ("shards", "shard_assignment", "setup_benchmark")
    assert get_method("retain_finetune").needs == ()
    df = pd.DataFrame({
        "forget_set": ["s"] * 4, "method": ["baseline", "retrain", "retrain", "sisa"],
        "variant": ["baseline", "retrain", "retrain", "sisa"], "seed": [0, 0, 1, 1],
        "auc": [0.8, 0.5, 0.5, 0.5], "auc_ci_low": [0.7, 0.4, 0.4, 0.4], "auc_ci_high": [0.9, 0.6, 0.6, 0.6],
        "test_vs_retrain": ["ABOVE", "UNDECIDED", "UNDECIDED", "EQUIVALENT"], "pc_forget_score": [1, 0, 0, 0],
        "wall_s": [10.0, 10.0, 20.0, 30.0], "setup_wall_s": [np.nan, np.nan, np.nan, 50.0],
    })
    out = add_verdicts(df, 0.03)
    assert out["setup_cost_vs_retrain"].iloc[3] == pytest.approx(2.5)  # 50 s over seed 1's retrain (20 s)
    assert out["cost_vs_retrain"].iloc[3] == pytest.approx(1.5)
    assert out["setup_cost_vs_retrain"].iloc[:3].isna().all()


# ------------------------------------------------------------------ the stages


def test_shard_and_unlearn_stages_hand_the_method_its_inputs(tmp_path):
    """stage_sisa_shards writes the ensemble and assignment; stage_unlearn gives them (and barcodes) to sisa."""
    from scunlearn.io import write_h5ad, write_json
    from scunlearn.stages.unlearn import stage_sisa_shards, stage_unlearn

    X, part, names = _toy()
    adata = ad.AnnData(X.numpy(), obs=pd.DataFrame(index=names), var=pd.DataFrame(index=[f"g{i}" for i in range(40)]))
    write_h5ad(adata, tmp_path / "adata.h5ad")
    write_json({k: list(names[getattr(part, k)]) for k in ("train", "validation", "audit")}, tmp_path / "split.json")
    write_json({"forget": list(names[part.forget])}, tmp_path / "forget.json")
    common = {"seed": 0, "device": "cpu"}
    model = {"hidden": CFG.hidden, "latent": CFG.latent, "dropout": CFG.dropout}
    out = {"model": str(tmp_path / "shards.pt"), "assignment": str(tmp_path / "shards.json"),
           "history": str(tmp_path / "shards.history.tsv")}
    stage_sisa_shards({"adata": str(tmp_path / "adata.h5ad"), "split": str(tmp_path / "split.json")}, out,
                      {**common, "variant": "sisa", "shards": 2, "model": model, "train": RECIPE}, 1)
    assignment = json.loads((tmp_path / "shards.json").read_text())
    assert assignment["sizes"] == [60, 60] and set(sum(assignment["shards"], [])) == set(names[part.train])
    assert set(pd.read_csv(tmp_path / "shards.history.tsv", sep="\t")["shard"]) == {0, 1}
    save_checkpoint(build_vae(CFG), tmp_path / "baseline.pt", {"genes": [f"g{i}" for i in range(40)]})
    inp = {"adata": str(tmp_path / "adata.h5ad"), "split": str(tmp_path / "split.json"),
           "forget": str(tmp_path / "forget.json"), "baseline": str(tmp_path / "baseline.pt"),
           "shards": out["model"], "shard_assignment": out["assignment"], "setup_benchmark": str(tmp_path / "none")}
    res = {"model": str(tmp_path / "u.pt"), "trajectory": str(tmp_path / "u.tsv"), "cells": str(tmp_path / "u.npz")}
    stage_unlearn(inp, res, {**common, "variant": "sisa", "method": "sisa", "params": {"shards": 2}}, 1)
    unlearned, meta = load_checkpoint(res["model"])
    assert isinstance(unlearned, ShardEnsemble)
    # the 20 forget cells are spread over both shards: both retrained; the benchmark was absent: NaN
    assert meta["report"]["sisa_shards_retrained"] == 2 and np.isnan(meta["report"]["setup_wall_s"])
    with np.load(res["cells"]) as z:  # per-cell statistics of the ensemble on every cell
        torch.testing.assert_close(torch.as_tensor(z["elbo"]), cell_terms(unlearned, X, np.arange(160)).elbo.double())
    inp.pop("shards")
    with pytest.raises(ScunlearnError, match="needs the inputs"):
        stage_unlearn(inp, res, {**common, "variant": "sisa", "method": "sisa", "params": {"shards": 2}}, 1)


def test_audit_stage_runs_on_an_ensemble(tmp_path):
    """The audit stage (per-cell, MLP and LOSS attacks, utility) loads and audits a shard ensemble."""
    from scunlearn.stages.audit import stage_audit
    from scunlearn.vae.cellstats import write_cell_stats

    d = tmp_path
    adata, part, X, inp, params = tiny_audit_job(d)
    recipe = dict(RECIPE, batch_size=64, max_epochs=1)
    cfg = VAEConfig(n_genes=adata.n_vars, hidden=[16], latent=2)
    ens, _, _ = train_shards(X, adata.obs_names, part.retain, part.validation, 2, cfg, recipe, 0)
    save_checkpoint(ens, d / "sisa.pt", {"genes": list(map(str, adata.var_names)),
                                         "report": {"sisa_shards": 2, "setup_wall_s": 7.0}})
    write_cell_stats(ens, X, adata.obs_names, d / "sisa.cells.npz")
    inp.update(models=[str(d / "sisa.pt")], cells=[str(d / "sisa.cells.npz")], benchmarks=[""])
    stage_audit(inp, {"audits": [str(d / "audit.json")]}, {**params, "variant": "sisa", "method": "sisa"}, 1)
    rec = json.loads((d / "audit.json").read_text())
    for key in ("pc_auc", "delta_vs_retrain", "auc", "loss_attack_auc", "recon_mse", "latent_acc", "val_elbo"):
        assert np.isfinite(rec[key]), key
    assert rec["sisa_shards"] == 2 and rec["setup_wall_s"] == 7.0  # the method's report reaches the record


# ------------------------------------------------------------------ the workflow


def test_workflow_schedules_one_shard_job_per_seed_and_unlearn_jobs_on_it(tmp_path):
    from tests.workflow.test_workflow import _config, _smk

    # the tiny study has variant sisa (S = 2, scattered only); add sisa4 on both forget sets, and a second seed
    cfg = _config(tmp_path, **{"train.seeds": [0, 3],
                               "methods.sisa4": {"method": "sisa", "params": {"shards": 4}}})
    r = _smk(["-n", "--forceall", "--configfile", str(cfg), "--directory", str(tmp_path)], tmp_path, timeout=300)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", text.split("Job stats:")[1], re.M))
    assert counts["sisa_shards"] == "4"  # one per sisa variant and seed (train.seeds), not per forget set
    jobs = re.split(r"^\[[^\]]+\]$", text, flags=re.M)  # one block per job, each after its [date] line
    shard_jobs = [j for j in jobs if "rule sisa_shards:" in j]
    assert sorted(re.search(r"wildcards: variant=(\w+), seed=(\d+)", j).groups() for j in shard_jobs) == [
        ("sisa", "0"), ("sisa", "3"), ("sisa4", "0"), ("sisa4", "3")]
    unlearn = [re.search(r"wildcards: variant=([\w@.-]+), forget=(\w+)", j).groups() + (j,)
               for j in jobs if "rule unlearn:" in j]
    sisa_jobs = [u for u in unlearn if u[0].startswith("sisa")]
    # one unlearning job per variant and forget set, its members the seeds 0 and 3
    assert sorted(u[:2] for u in sisa_jobs) == [("sisa", "scattered"), ("sisa4", "scattered"),
                                                ("sisa4", "structured")]
    for variant, _, j in sisa_jobs:  # each depends on the shard jobs of its variant, one per member's seed
        for seed in (0, 3):
            for path in (f"sisa/{variant}/seed{seed}.pt", f"sisa/{variant}/seed{seed}.shards.json",
                         f"benchmarks/sisa_shards/{variant}/seed{seed}.tsv"):
                assert f"results/tiny/{path}" in j, (variant, seed, path)
    others = [j for v, _, j in unlearn if not v.startswith("sisa")]
    assert others and not any("results/tiny/sisa/" in j or "sisa_shards" in j for j in others)  # no extra inputs


def test_method_comparison_shows_the_setup_cost_only_when_a_method_has_one():
    from scunlearn.report.html import render_comparison
    from scunlearn.report.tables import table_comparison
    from tests.report.test_report import make_summary

    summary = make_summary()
    assert "setup cost vs retrain" not in render_comparison(table_comparison(summary))
    rows = summary["variant"] == "fisher"
    summary.loc[rows, "setup_cost_vs_retrain"] = [1.25 + 0.5 * i for i in range(rows.sum())]
    comp = table_comparison(summary).set_index(["forget_set", "variant"])
    fisher = comp.xs("fisher", level="variant")["setup_cost_vs_retrain"]
    expected = summary[rows].groupby("forget_set")["setup_cost_vs_retrain"].mean()
    assert fisher.to_dict() == pytest.approx(expected.to_dict())  # the mean over seeds
    assert comp.xs("retrain", level="variant")["setup_cost_vs_retrain"].isna().all()
    page = render_comparison(table_comparison(summary))
    assert "setup cost vs retrain" in page and f"{expected.iloc[0]:.3f}" in page
