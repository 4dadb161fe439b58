"""The attack registry: parse-time parameter checks, and a toy attack run through the audit stage."""

import json
import sys

import numpy as np
import pytest

from scunlearn import ScunlearnError
from scunlearn.audit.attacks import ATTACKS, resolve_attacks, spec
from scunlearn.params import number, obj
from tests.conftest import write_audit_inputs, write_reference_models


def test_resolve_attacks_fills_defaults_and_names_bad_keys():
    out = resolve_attacks({"per_cell": {}, "mlp": {"repeats": 2}})
    assert list(out) == ["per_cell", "mlp"] and out["mlp"]["folds"] == 5 and out["mlp"]["repeats"] == 2
    with pytest.raises(ScunlearnError, match=r"audit.attacks.mlp.repeats"):
        resolve_attacks({"per_cell": {}, "mlp": {"repeats": 0}})
    with pytest.raises(ScunlearnError, match=r"audit.attacks.per_cell: unknown parameter 'stat'"):
        resolve_attacks({"per_cell": {"stat": "elbo"}})
    with pytest.raises(ScunlearnError, match="unknown attack 'lira'"):
        resolve_attacks({"per_cell": {}, "lira": {}})
    with pytest.raises(ScunlearnError, match="'per_cell' is required"):
        resolve_attacks({"mlp": {}})


@pytest.fixture(scope="module")
def audit_study(tmp_path_factory, processed):
    """A micro study on disk: data, split, forget set, matched negatives, 3 baselines and 3 retrains."""
    d = tmp_path_factory.mktemp("audit")
    adata = processed.copy()
    part, X = write_audit_inputs(d, adata)
    paths = write_reference_models(d, adata, X, part, 3, max_epochs=2, batch_size=256, kl_warmup_epochs=1,
                                   checkpoints=True)
    return d, paths


def _run_audit(d, paths, attacks, out, seeds=(0,)):
    """Run the audit stage on the baseline models of ``seeds`` (one job, one record each); the first record."""
    from scunlearn.stages.audit import stage_audit

    names = sorted(paths)
    outs = [out] if len(seeds) == 1 else [out.with_name(f"{out.stem}_seed{s}.json") for s in seeds]
    inp = {"models": [str(d / f"baseline{s}.pt") for s in seeds],
           "cells": [paths[f"baseline/seed{s}"] for s in seeds], "benchmarks": ["" for _ in seeds],
           "adata": str(d / "adata.h5ad"),
           "split": str(d / "split.json"), "forget": str(d / "forget.json"), "matched": str(d / "matched.json"),
           "markers": str(d / "markers.tsv"),
           "ref_retrain": [paths[n] for n in names if n.startswith("retrain")],
           "ref_baseline": [paths[n] for n in names if n.startswith("baseline")], "controls": []}
    params = {"run": "t", "dataset": "simulate", "forget": "scattered", "variant": "baseline", "method": "baseline",
              "model_seeds": list(seeds), "seed": 0, "target_sum": 1e4,
              "self_names": [f"baseline/seed{s}" for s in seeds],
              "ref_retrain": [n for n in names if n.startswith("retrain")],
              "ref_baseline": [n for n in names if n.startswith("baseline")], "controls": [],
              "audit": {"alpha": 0.05, "equivalence_margin": 0.1, "bootstrap": 50,
                        "attacks": resolve_attacks(attacks), "utility": {"max_cells": 300, "folds": 3}}}
    stage_audit(inp, {"audits": [str(o) for o in outs]}, params, 1)
    return json.loads(outs[0].read_text())


def test_a_toy_attack_is_one_module_and_one_config_entry(audit_study, tmp_path, monkeypatch):
    d, paths = audit_study
    # the module: a file defining run(data, params)
    pkg = tmp_path / "toyattacks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "norm.py").write_text(
        "import numpy as np\n"
        "from scunlearn.membership.metrics import auc_score\n\n"
        "def run(data, params):\n"
        "    mu = data.features[:, : data.model.cfg.latent]\n"
        "    return {'toy_auc': auc_score(data.labels, params['sign'] * np.linalg.norm(mu, axis=1))}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(ATTACKS, "toy", ATTACKS["loss"])  # placeholder replaced below by spec()
    del ATTACKS["toy"]
    spec("toy", {"sign": 1.0}, obj(sign=number()), "latent norm as the score", module="toyattacks.norm",
         columns=("toy_auc",))
    try:
        # the config entry
        rec = _run_audit(d, paths, {"per_cell": {}, "toy": {"sign": -1.0}}, tmp_path / "a.json")
        assert 0.0 <= rec["toy_auc"] <= 1.0
        flipped = _run_audit(d, paths, {"per_cell": {}, "toy": {"sign": 1.0}}, tmp_path / "b.json")
        assert flipped["toy_auc"] == pytest.approx(1.0 - rec["toy_auc"])
        # the primary attack ran too; the MLP and LOSS attacks did not (not configured)
        assert 0.0 <= rec["pc_auc"] <= 1.0 and rec["n_references"] == 3 and "auc" not in rec
        # the summary keeps the attack's declared column after the contract
        from scunlearn.audit.summary import SUMMARY_COLUMNS, aggregate

        other = dict(rec, method="retrain", variant="retrain", test_vs_retrain="UNDECIDED")
        df = aggregate([rec, other], 0.03)
        assert list(df.columns) == SUMMARY_COLUMNS + ["toy_auc"]
    finally:
        ATTACKS.pop("toy", None)
        sys.modules.pop("toyattacks.norm", None)


def test_every_builtin_attack_runs_through_the_audit_stage(audit_study, tmp_path):
    d, paths = audit_study
    rec = _run_audit(d, paths, {"per_cell": {"statistic": "nll"}, "mlp": {"folds": 3, "repeats": 1,
                                "attacker": {"hidden": [8], "epochs": 10}}, "loss": {}}, tmp_path / "c.json")
    for key in ("pc_auc", "delta_vs_retrain", "auc", "auc_ci_low", "loss_attack_auc", "recon_mse"):
        assert np.isfinite(rec[key]), key
    assert rec["n_references"] == 3 and rec["n_in_references"] == 2  # a model is never its own reference


SMALL_MLP = {"per_cell": {}, "mlp": {"folds": 3, "repeats": 1, "attacker": {"hidden": [8], "epochs": 10}}, "loss": {}}


def test_one_audit_job_audits_every_seed_and_each_record_ignores_its_job_mates(audit_study, tmp_path):
    """Seeds 0, 1, 2 audited in one job: one record per seed, each equal to auditing that seed alone."""
    d, paths = audit_study
    _run_audit(d, paths, SMALL_MLP, tmp_path / "all.json", seeds=(0, 1, 2))
    records = {s: json.loads((tmp_path / f"all_seed{s}.json").read_text()) for s in (0, 1, 2)}
    assert [r["seed"] for r in records.values()] == [0, 1, 2]
    assert len({r["model"] for r in records.values()}) == 3
    assert len({r["pc_auc"] for r in records.values()}) > 1  # three different models, not one record thrice
    alone = _run_audit(d, paths, SMALL_MLP, tmp_path / "alone.json", seeds=(1,))
    assert alone == records[1]  # bit for bit: its torch RNG is reset before each model
    # later seed first: same record again
    _run_audit(d, paths, SMALL_MLP, tmp_path / "rev.json", seeds=(2, 1))
    assert json.loads((tmp_path / "rev_seed1.json").read_text()) == records[1]


def test_audit_job_refuses_mismatched_seed_lists(audit_study, tmp_path):
    from scunlearn.stages.audit import stage_audit

    d, paths = audit_study
    inp = {"models": [str(d / "baseline0.pt")], "cells": [], "benchmarks": [""]}
    params = {"variant": "baseline", "forget": "scattered", "model_seeds": [0], "self_names": [None]}
    with pytest.raises(ScunlearnError, match="1 checkpoints, 0 cell statistics"):
        stage_audit(inp, {"audits": [str(tmp_path / "x.json")]}, params, 1)
