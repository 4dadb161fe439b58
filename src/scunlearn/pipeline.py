"""The workflow's stages as plain functions of paths and parameters.

Each Snakemake script calls :func:`run` with its stage name; the stage gets named
inputs, outputs and params as dicts, so every stage can be called (and tested)
without Snakemake. Logic lives in the modules these functions call.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import ScunlearnError
from .costs import log_ready
from .io import read_adata, read_cells, read_json, read_markers, setup_logging, write_h5ad, write_json, write_tsv  # noqa: F401

if TYPE_CHECKING:  # torch is imported by the stages that need it: data and report stages run without it
    import anndata as ad
    import torch

log = logging.getLogger("scunlearn.pipeline")


class _OnFirstUse:
    """A module imported when first used: stages without torch (split, forget, aggregate, report) skip its import."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        import importlib

        return getattr(importlib.import_module(self._name), attr)


torch = _OnFirstUse("torch")


# ---------------------------------------------------------------- helpers

def param_hash(obj) -> str:
    """Short stable hash of a JSON-able parameter set (shown in the summary)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def matrix_checksum(adata: ad.AnnData) -> str:
    """SHA-256 of the count matrix content, cell barcodes and gene names (not of the file bytes)."""
    import scipy.sparse as sp

    X = sp.csr_matrix(adata.X)
    h = hashlib.sha256()
    for arr in (X.indptr, X.indices, X.data.astype(np.float64)):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update("\n".join(adata.obs_names).encode())
    h.update("\n".join(adata.var_names).encode())
    return h.hexdigest()


def _device(spec: str) -> torch.device:
    from .model import resolve_device

    dev = resolve_device(spec)
    log.info("device: %s", dev)
    return dev


def _setup(inp: dict, params: dict, threads: int):
    """Seed, thread count and device of a training-like stage, then its data: (seed, device, adata, X, part)."""
    from .model import seed_everything

    seed = int(params["seed"])
    seed_everything(seed, threads)
    device = _device(params["device"])
    return (seed, device, *_load_experiment(inp, device))


def _load_experiment(inp: dict, device):
    """AnnData, count tensor and partition for one forget set (or just the split)."""
    from .splits import load_partition
    from .train import counts_tensor

    adata = read_cells(inp["adata"])
    part = load_partition(adata, inp["split"], inp.get("forget"))
    X = counts_tensor(adata, device)
    log_ready(log, "counts on the device")
    return adata, X, part


# ---------------------------------------------------------------- stages

def stage_download(inp, out, params, threads):
    from .acquire import download_pbmc33k

    download_pbmc33k(Path(out["archive"]).parent, params["url"])
    log.info("downloaded %s to %s (verified by acquire)", params["url"], out["archive"])


def stage_acquire(inp, out, params, threads):
    from .acquire import acquire

    adata = acquire(params["dataset"], read_markers(inp["markers"]), params["resources_dir"], params["checksums"])
    adata.uns["data_sha256"] = matrix_checksum(adata)
    log.info("raw data: %d cells x %d genes; content sha256 %s", adata.n_obs, adata.n_vars, adata.uns["data_sha256"])
    write_h5ad(adata, out["raw"])


def stage_preprocess(inp, out, params, threads):
    from .preprocess import preprocess

    raw = read_adata(inp["raw"])
    adata = preprocess(raw, params["preprocess"], read_markers(inp["markers"]), params["seed"])
    adata.uns["data_sha256"] = raw.uns.get("data_sha256", "")
    write_h5ad(adata, out["adata"])


def stage_split(inp, out, params, threads):
    from .splits import make_split

    adata = read_adata(inp["adata"])
    s = params["splits"]
    split = make_split(adata.obs_names, s["train_fraction"], s["validation_fraction"], params["seed"])
    log.info("split sizes: %s", split["sizes"])
    write_json(split, out["split"])


def stage_forget(inp, out, params, threads):
    from .splits import make_forget_set

    adata = read_adata(inp["adata"])
    try:
        fs = make_forget_set(adata, read_json(inp["split"]), params["spec"], params["seed"], params["name"])
    except ScunlearnError as e:
        raise ScunlearnError(f"config forget_sets.{params['name']}: {e}") from e
    labels = adata.obs.loc[fs["forget"], "cell_type"].astype(str).value_counts().to_dict()
    fs["cell_types"] = labels
    log.info("forget set %s: %d cells; cell types %s", params["name"], fs["size"], labels)
    write_json(fs, out["forget"])


def stage_train(inp, out, params, threads):
    """Baseline (no forget set given) or retrain (forget cells removed) — the same recipe."""
    from .model import VAEConfig, build_vae
    from .train import fit, save_checkpoint

    seed, device, adata, X, part = _setup(inp, params, threads)
    train_idx = part.retain  # = train when there is no forget set
    cfg = VAEConfig(n_genes=adata.n_vars, **params["model"])
    model = build_vae(cfg).to(device)
    tr = params["train"]
    log.info("training %s on %d cells (%d removed), validating on %d; seed %d",
             params["kind"], len(train_idx), len(part.forget), len(part.validation), seed)
    t0 = time.perf_counter()
    hist = fit(model, X, train_idx, part.validation, lr=tr["lr"], batch_size=tr["batch_size"],
               max_epochs=tr["max_epochs"], kl_warmup_epochs=tr["kl_warmup_epochs"],
               patience=tr["patience"], seed=seed)
    best = hist.loc[hist["val_elbo"].idxmax()]
    meta = {"kind": params["kind"], "seed": seed, "n_train": int(len(train_idx)),
            "best_epoch": int(best["epoch"]), "val_elbo": float(best["val_elbo"]),
            "epochs_run": int(len(hist)), "train_seconds": time.perf_counter() - t0,
            "genes": list(map(str, adata.var_names)), "param_hash": param_hash([params["model"], tr])}
    write_tsv(hist, out["history"])
    _write_cells(model, X, adata, out)
    save_checkpoint(model, out["model"], meta)


def stage_train_ensemble(inp, out, params, threads):
    """All seeds of one training recipe (the baseline, or one forget set's retrain) in one job, trained at
    once as one batched model (:func:`scunlearn.ensemble.fit_ensemble`): per seed, the checkpoint, history
    and per-cell statistics that :func:`stage_train` writes for that seed alone (``out``'s lists, in
    the order of ``params["seeds"]``)."""
    from .costs import log_units
    from .ensemble import fit_ensemble
    from .model import VAEConfig
    from .train import save_checkpoint

    seeds = [int(s) for s in params["seeds"]]
    files = {k: [out[k]] if isinstance(out[k], (str, Path)) else list(out[k]) for k in ("model", "history", "cells")}
    for k, paths in files.items():
        if len(paths) != len(seeds):
            raise ScunlearnError(f"train ensemble: {len(paths)} {k} outputs for {len(seeds)} seeds {seeds}")
    _, device, adata, X, part = _setup(inp, {**params, "seed": seeds[0]}, threads)
    train_idx = part.retain  # = train when there is no forget set
    cfg = VAEConfig(n_genes=adata.n_vars, **params["model"])
    tr = params["train"]
    log.info("training %s on %d cells (%d removed), validating on %d; seeds %s as one batched model",
             params["kind"], len(train_idx), len(part.forget), len(part.validation), seeds)
    t0 = time.perf_counter()
    fitted = fit_ensemble(cfg, seeds, X, train_idx, part.validation, lr=tr["lr"], batch_size=tr["batch_size"],
                          max_epochs=tr["max_epochs"], kl_warmup_epochs=tr["kl_warmup_epochs"],
                          patience=tr["patience"], step="auto" if params.get("cuda_graphs", True) else "eager")
    secs = (time.perf_counter() - t0) / len(seeds)  # each seed's share of the batched training
    log_units(log, len(seeds), "models trained")
    for i, (seed, (model, hist)) in enumerate(zip(seeds, fitted)):
        best = hist.loc[hist["val_elbo"].idxmax()]
        meta = {"kind": params["kind"], "seed": seed, "n_train": int(len(train_idx)),
                "best_epoch": int(best["epoch"]), "val_elbo": float(best["val_elbo"]),
                "epochs_run": int(len(hist)), "train_seconds": secs,
                "genes": list(map(str, adata.var_names)), "param_hash": param_hash([params["model"], tr])}
        write_tsv(hist, files["history"][i])
        _write_cells(model, X, adata, {"cells": files["cells"][i]})
        save_checkpoint(model, files["model"][i], meta)


def stage_matched(inp, out, params, threads):
    """Matched negatives in the preprocessed PCA: a representation no model trained, blind to membership."""
    from .matched import fold_groups_record, matched_negatives
    from .splits import load_partition

    adata = read_cells(inp["adata"])

    part = load_partition(adata, inp["split"], inp.get("forget"))
    if "X_pca" not in adata.obsm:
        raise ScunlearnError(f"{inp['adata']}: no obsm['X_pca'] to match negatives in; rerun preprocessing")
    pca = np.asarray(adata.obsm["X_pca"], dtype=float)
    res = matched_negatives(pca[part.forget], pca[part.audit], adata.obs_names[part.audit], params["k"],
                            params["min_matched"], forget_barcodes=adata.obs_names[part.forget])
    res["representation"] = "X_pca"
    if params.get("fold_groups"):  # the MLP attack's fold groups: once here, not in every audit job
        # clustered in the stored precision, as the audit clustered them before (and still does without them)
        res["fold_groups"] = fold_groups_record(np.asarray(adata.obsm["X_pca"])[part.forget],
                                                adata.obs_names[part.forget], res["nearest_forget"],
                                                int(params["fold_groups"]), int(params["seed"]))
    res["cell_types"] = adata.obs.loc[res["barcodes"], "cell_type"].astype(str).value_counts().to_dict()
    log.info("matched negatives: %d cells (k used %d); cell types %s", res["size"], res["k_used"], res["cell_types"])
    write_json(res, out["matched"])


def stage_unlearn(inp, out, params, threads):
    from .methods import get_method, resolve_params
    from .methods.context import Trajectory, UnlearnContext
    from .train import check_genes, load_checkpoint, save_checkpoint

    seed, device, adata, X, part = _setup(inp, params, threads)
    method = get_method(params["method"])
    p = resolve_params(params["method"], params["params"], params["variant"])
    model, base_meta = load_checkpoint(inp["baseline"], device)
    check_genes(model, adata, inp["baseline"], base_meta)
    traj = Trajectory(params["variant"])
    ctx = UnlearnContext.build(model, X, part, seed, p, traj, inputs=_method_inputs(method, inp, adata, part))
    log.info("unlearning with %s (%s) from %s: forget %d, retain %d, validation %d; params %s",
             params["variant"], method.name, inp["baseline"], len(part.forget), len(part.retain),
             len(part.validation), json.dumps(p))
    t0 = time.perf_counter()
    model = method.fn(ctx)
    meta = {"kind": "unlearned", "method": method.name, "variant": params["variant"], "seed": seed,
            "params": p, "param_hash": param_hash(p), "unlearn_seconds": time.perf_counter() - t0,
            "baseline": str(inp["baseline"]), "genes": base_meta.get("genes", []), "report": dict(ctx.report)}
    frame = traj.frame()
    if frame.empty:
        frame = pd.DataFrame({"epoch": []})
    write_tsv(frame, out["trajectory"])
    _write_cells(model, X, adata, out)
    save_checkpoint(model, out["model"], meta)


def _method_inputs(method, inp: dict, adata, part) -> dict:
    """The extra inputs a method declared (``MethodSpec.needs``: paths from the rule), plus the barcodes of
    its forget / retain / validation rows to join them with; nothing for a method that declared none."""
    if not method.needs:
        return {}
    missing = [n for n in method.needs if n not in inp]
    if missing:
        raise ScunlearnError(f"method {method.name} needs the inputs {missing}, which the unlearn rule did not give")
    names = adata.obs_names
    return {**{n: inp[n] for n in method.needs},
            "barcodes": {k: list(map(str, names[getattr(part, k)])) for k in ("forget", "retain", "validation")}}


def stage_sisa_shards(inp, out, params, threads):
    """SISA's up-front training: S shards of the training cells, one VAE each (the baseline's recipe)."""
    from .methods.sisa import shard_seed, train_shards
    from .model import VAEConfig
    from .train import save_checkpoint

    seed, device, adata, X, part = _setup(inp, params, threads)
    S, tr = int(params["shards"]), params["train"]
    cfg = VAEConfig(n_genes=adata.n_vars, **params["model"])
    log.info("sisa %s: %d training cells in %d shards, validating on %d; seed %d",
             params["variant"], len(part.train), S, len(part.validation), seed)
    t0 = time.perf_counter()
    ens, shards, hists = train_shards(X, adata.obs_names, part.train, part.validation, S, cfg, tr, seed)
    meta = {"kind": "sisa_shards", "variant": params["variant"], "seed": seed, "n_shards": S,
            "shard_sizes": [len(c) for c in shards], "shard_seeds": [shard_seed(seed, k) for k in range(S)],
            "train": tr, "train_seconds": time.perf_counter() - t0, "genes": list(map(str, adata.var_names)),
            "param_hash": param_hash([params["model"], tr, S])}
    write_tsv(pd.concat(hists, ignore_index=True), out["history"])
    write_json({"seed": seed, "n_shards": S, "sizes": [len(c) for c in shards], "shards": shards}, out["assignment"])
    save_checkpoint(ens, out["model"], meta)


def _write_cells(model, X, adata, out) -> None:
    """The model's per-cell statistics on every cell, for the per-cell audit (see :mod:`scunlearn.cellstats`)."""
    from .cellstats import write_cell_stats

    if "cells" in out:
        write_cell_stats(model, X, adata.obs_names, out["cells"])


def stage_audit(inp, out, params, threads):
    """Audit every seed of one model on one forget set: the shared data read once, then each model in turn.

    One job per (forget set, model): the data, split, matched negatives, fold groups and the
    references' statistics are the same for all seeds of a model, so they are read once.
    Each model's torch RNG is reset to the audit seed before it is audited, so its record
    is the same whichever seeds share its job; each record is written (atomically) as soon
    as it is done.
    """
    # the audit's imports, before the data are read: start-up is measured to the last ready mark
    # (in _load_experiment), so they count as start-up, as they did with one job per model
    from .audit import attacks, data, utility  # noqa: F401
    from .costs import log_units
    from .model import seed_everything
    from .train import load_checkpoint  # noqa: F401

    models, cells, benches = list(inp["models"]), list(inp["cells"]), list(inp["benchmarks"])
    seeds, self_names, outs = list(params["model_seeds"]), list(params["self_names"]), list(out["audits"])
    if not len({len(models), len(cells), len(benches), len(seeds), len(self_names), len(outs)}) == 1:
        raise ScunlearnError(
            f"audit of {params['variant']} on {params['forget']}: {len(models)} checkpoints, {len(cells)} "
            f"cell statistics, {len(benches)} benchmarks, {len(seeds)} seeds, {len(self_names)} names and "
            f"{len(outs)} outputs: one of each per audited seed")
    seed_everything(int(params["seed"]), threads)
    # audit.device (default: the study's device): the attackers train there, the model and counts live there
    shared = _audit_shared(inp, params, _device(params.get("device") or "cpu"))
    log_units(log, len(models), "models audited")
    shares = list(params.get("bench_models") or [1] * len(models))
    for model_path, cells_path, bench, model_seed, self_name, path, share in zip(models, cells, benches, seeds,
                                                                                 self_names, outs, shares):
        t0, c0 = time.perf_counter(), time.process_time()
        seed_everything(int(params["seed"]), threads)  # per model: its record never depends on its job-mates
        record = _audit_model(shared, params, model_path, cells_path, bench, int(model_seed), self_name)
        if int(share) > 1:  # trained in one job with other seeds (train.ensemble): its share of the wall time
            record["wall_s"] = record["wall_s"] / int(share)
        write_json(record, path)
        log.info("audited %s/seed%s in %.1fs (%.1fs CPU): %s", params["variant"], model_seed,
                 time.perf_counter() - t0, time.process_time() - c0, path)


def _audit_shared(inp, params, device) -> dict:
    """What every model of an audit job shares: data, partition, negatives, fold groups, references."""
    from .audit.attacks import mlp_fold_groups
    from .cellstats import read_cell_stats
    from .matched import matched_fold_groups, read_matched

    adata, X, part = _load_experiment(inp, device)
    rec, neg, _ = read_matched(inp["matched"], adata, part.audit)
    cfg = params["audit"]

    def stats(paths, names):
        return {n: read_cell_stats(p, adata.obs_names) for n, p in zip(names, paths)}

    types = adata.obs["cell_type"].astype(str).to_numpy()
    return {
        "adata": adata, "X": X, "part": part, "neg": neg, "types": types,
        "negatives": audit_negatives(part, neg, types),
        # the MLP attack's folds keep neighbourhoods together: forget cells clustered in PCA,
        # each matched negative with its nearest forget cell (clustered by the matched stage)
        "groups": matched_fold_groups(rec, inp["matched"], adata, part.forget, mlp_fold_groups(cfg["attacks"]),
                                      int(params["seed"])),
        "retrain_stats": stats(inp["ref_retrain"], params["ref_retrain"]),
        "baseline_stats": stats(inp["ref_baseline"], params["ref_baseline"]),
        "control_stats": stats(inp["controls"], params["controls"]),
        "markers": adata.var_names.isin(read_markers(inp["markers"])["gene"]),
    }


def audit_negatives(part, matched: np.ndarray, types: np.ndarray) -> dict[str, np.ndarray]:
    """The audit's negative sets (rows): ``matched``, ``all`` audit cells, and the audit cells of the
    forget cells' types (``cell_type``)."""
    return {"matched": matched, "all": part.audit,
            "cell_type": part.audit[np.isin(types[part.audit], np.unique(types[part.forget]))]}


def study_stats(inp: dict, statistic: str = "elbo") -> dict:
    """One forget set's per-cell statistics of every baseline and retrained model, with its cells.

    ``inp``: paths ``adata``, ``split``, ``forget``, ``matched`` and lists ``ref_retrain`` /
    ``ref_baseline`` of ``.cells.npz`` files (named ``retrain/seed{s}`` / ``baseline/seed{s}``
    by ``names_retrain`` / ``names_baseline``). Returns retrain, baselines, pos, negatives, types.
    """
    from .audit.attacks.per_cell import cell_statistic
    from .cellstats import read_cell_stats
    from .matched import read_matched
    from .splits import load_partition

    adata = read_cells(inp["adata"])
    part = load_partition(adata, inp["split"], inp["forget"])
    _, neg, _ = read_matched(inp["matched"], adata, part.audit)
    types = adata.obs["cell_type"].astype(str).to_numpy()

    def stats(paths, names):
        return {n: cell_statistic(read_cell_stats(p, adata.obs_names), statistic) for n, p in zip(names, paths)}

    return {"retrain": stats(inp["ref_retrain"], inp["names_retrain"]),
            "baselines": stats(inp["ref_baseline"], inp["names_baseline"]),
            "pos": part.forget, "negatives": audit_negatives(part, neg, types), "types": types}


def stage_controls(inp, out, params, threads):
    """The judge's controls on one forget set: every baseline and retrained model audited against the others."""
    from .audit.attacks.per_cell import is_type_level
    from .audit.controls import control_trials, count_controls

    pc = params["per_cell"]
    against = pc["negatives"]
    st = study_stats({**inp, "names_retrain": params["names_retrain"], "names_baseline": params["names_baseline"]},
                     pc["statistic"])
    trials = control_trials(st["retrain"], st["baselines"], st["pos"], st["negatives"],
                            strata=st["types"] if pc["centre_by_cell_type"] else None, test=pc["test"],
                            measure=pc["measure"], against=against, type_level=is_type_level(params["forget_kind"]),
                            alpha=params["alpha"], margin=params["margin"], n0=pc["shrinkage"])
    counts = count_controls(trials, params["alpha"])
    log.info("controls on %s (%s test of the %s, %s negatives): %d of %d baselines caught; %d of %d retrained "
             "models flagged at alpha/%d (%d rejected at alpha, %.2f expected under the null); controls_ok=%s",
             params["forget"], pc["test"], pc["measure"], against, counts["baseline_caught"], counts["n_baseline"],
             counts["retrain_false_alarms"], counts["n_retrain"], counts["n_retrain"],
             counts["retrain_rejected_at_alpha"], counts["expected_at_alpha"], counts["controls_ok"])
    for r in trials.itertuples():
        log.info("  %s %s: pc_auc %.3f, shift %+.3f, delta %+.3f, p %.4f, %s", r.kind, r.model, r.pc_auc, r.pc_shift,
                 r.delta, r.p, r.outcome)
    write_json({"forget_set": params["forget"], "test": pc["test"], "measure": pc["measure"], "negatives": against,
                "alpha": params["alpha"], **counts, "trials": trials.drop(columns="draw").to_dict("records")},
               out["controls"])


def _audit_model(shared: dict, params: dict, model_path, cells_path, bench_path, model_seed: int,
                 self_name: str | None) -> dict:
    """One model's audit record: every configured attack (the per-cell calibrated one first), then utility."""
    from .audit.attacks import get_attack
    from .audit.data import AuditData
    from .audit.utility import model_utility
    from .cellstats import read_cell_stats
    from .costs import read_benchmark
    from .train import check_genes, load_checkpoint

    adata, X, part = shared["adata"], shared["X"], shared["part"]
    seed = int(params["seed"])
    model, meta = load_checkpoint(model_path, X.device)
    check_genes(model, adata, model_path, meta)
    cfg = params["audit"]
    # each model's attacks get their own copies of the shared arrays (small): an attack that
    # changed one in place could otherwise change the next model's record
    own = copy.deepcopy({k: shared[k] for k in ("negatives", "groups", "retrain_stats", "baseline_stats",
                                                 "control_stats", "types")})
    data = AuditData(
        model=model, X=X, forget=part.forget.copy(), negatives=own["negatives"], groups=own["groups"],
        seed=seed, alpha=cfg["alpha"], margin=cfg["equivalence_margin"], bootstrap=cfg["bootstrap"],
        target_stats=read_cell_stats(cells_path, adata.obs_names),
        retrain_stats=own["retrain_stats"], baseline_stats=own["baseline_stats"],
        control_stats=own["control_stats"], self_name=self_name, cell_types=own["types"],
        forget_kind=params.get("forget_kind"))
    record: dict = {}
    for name, p in cfg["attacks"].items():
        t0 = time.perf_counter()
        res = get_attack(name).fn(data, p)
        record.update(res)
        log.info("attack %s (%.1fs): %s", name, time.perf_counter() - t0,
                 {k: round(v, 4) for k, v in res.items() if isinstance(v, float)})

    util = model_utility(model, X, part, shared["types"], shared["markers"], cfg["utility"], seed,
                         params["target_sum"])
    log.info("utility: %s", util)
    bench = read_benchmark(bench_path or "")
    wall, rss = bench.get("s", float("nan")), bench.get("max_rss", float("nan"))
    return {
        "run": params["run"], "dataset": params["dataset"], "forget_set": params["forget"],
        "method": params["method"], "variant": params["variant"],
        "param_hash": meta.get("param_hash", ""), "seed": model_seed,
        **record, **util, **meta.get("report", {}), "n_forget": int(len(part.forget)),
        "n_negatives": int(len(shared["neg"])), "n_negatives_cell_type": int(len(shared["negatives"]["cell_type"])),
        "n_audit": int(len(part.audit)), "wall_s": wall, "max_rss_mb": rss, "model": str(model_path),
    }


def aggregate(records: list[dict], tolerance: float, alpha: float = 0.05,
              controls: list[dict] | None = None) -> pd.DataFrame:
    """One tidy row per audited model with verdicts, controls, floor and band (the summary.tsv contract).

    ``controls``: the controls stage's records, one per forget set (counts over every seed);
    without them the controls are counted over the audited rows' seeds.
    """
    from .audit.attacks import ATTACKS
    from .audit.summary import RENAME, SUMMARY_COLUMNS
    from .audit.verdict import add_verdicts

    df = pd.DataFrame(records).rename(columns=RENAME)
    for c in controls or []:
        rows = df["forget_set"] == c["forget_set"]
        for col, key in (("controls_baseline_caught", "baseline_caught"), ("controls_n_baseline", "n_baseline"),
                         ("controls_false_alarms", "retrain_false_alarms"), ("controls_n_retrain", "n_retrain")):
            df.loc[rows, col] = c[key]
    extra = [c for a in ATTACKS.values() for c in a.columns if c in df.columns]  # user attacks' columns
    missing = {"baseline", "retrain"} - set(df["method"])
    if missing:
        raise ScunlearnError(f"aggregate: no {sorted(missing)} models among the audits")
    for col in SUMMARY_COLUMNS:
        if col not in df:
            df[col] = np.nan
    df = add_verdicts(df, tolerance, alpha)
    order = {"baseline": 0, "retrain": 1}
    df["_o"] = df["method"].map(order).fillna(2)
    df = df.sort_values(["forget_set", "_o", "variant", "seed"]).drop(columns="_o")
    return df[SUMMARY_COLUMNS + extra].reset_index(drop=True)


def stage_aggregate(inp, out, params, threads):
    records = [read_json(p) for p in inp["audits"]]
    controls = [read_json(p) for p in inp["controls"]]
    df = aggregate(records, params["tolerance"], params["alpha"], controls)
    from .audit.verdict import power_summary

    trials = pd.DataFrame([{"forget_set": c["forget_set"], "test": c["test"], "measure": c["measure"],
                            "negatives": c["negatives"], **t}
                           for c in controls for t in c["trials"]])
    write_tsv(trials, out["controls"])
    for c in controls:
        log.info("controls on %s: %d of %d baseline models caught; %d of %d retrained models flagged at "
                 "alpha/%d (expected under the null: at most %.2f); %d rejected at alpha (expected %.2f); "
                 "controls_ok=%s", c["forget_set"], c["baseline_caught"], c["n_baseline"],
                 c["retrain_false_alarms"], c["n_retrain"], c["n_retrain"], c["expected_false_alarms"],
                 c["retrain_rejected_at_alpha"], c["expected_at_alpha"], c["controls_ok"])
    for fs, g in df.groupby("forget_set"):
        log.info("forget set %s: per-cell AUC by variant %s; verdicts %s", fs,
                 g.groupby("variant")["pc_auc"].mean().round(3).to_dict(),
                 g.groupby("variant")["verdict"].agg(lambda v: "/".join(v)).to_dict())
    for row in power_summary(df, params["alpha"]).to_dict("records"):
        log.info("audit power: %s", row)
    write_tsv(df, out["summary"])


def stage_report(inp, out, params, threads):
    import anndata as ad

    from .io import verify_digest
    from .report import build_report

    provenance = package_versions()
    verify_digest(inp["adata"])
    adata = ad.read_h5ad(inp["adata"], backed="r")
    provenance["data_sha256 (raw count matrix)"] = str(adata.uns.get("data_sha256", ""))
    adata.file.close()
    trajs = [dict(t, path=str(p)) for t, p in zip(params["trajectories"], inp["trajectories"])]
    controls = pd.read_csv(inp["controls"], sep="\t") if inp.get("controls") else None
    build_report(inp["summary"], trajs, Path(out["html"]).parent, params["config"], provenance, controls=controls)


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("scunlearn", "torch", "numpy", "scipy", "pandas", "anndata", "scanpy", "scikit-learn",
                "snakemake", "matplotlib", "seaborn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run(stage_fn, smk) -> None:
    """Entry point for ``workflow/scripts``: log to the rule's log file, run ``stage_fn``, log any error.

    Each script passes its stage function itself (``run(stage_train, snakemake)``), so a
    reader can follow the call from the rule to the code.
    """
    from .costs import tune_allocator

    stage = stage_fn.__name__.removeprefix("stage_")
    setup_logging(smk.log[0] if len(smk.log) else None)
    tune_allocator()
    inp = {k: v for k, v in smk.input.items()}
    out = {k: v for k, v in smk.output.items()}
    params = copy.deepcopy({k: v for k, v in smk.params.items()})
    log.info("stage %s: rule %s, wildcards %s, threads %d", stage, smk.rule, dict(smk.wildcards.items()), smk.threads)
    log_ready(log, "stage called")
    try:
        stage_fn(inp, out, params, smk.threads)
    except Exception as e:
        log.error("stage %s failed:\n%s", stage, traceback.format_exc())
        _tell_terminal(stage, smk, e)
        raise
    # the process's own CPU seconds: Snakemake's benchmark samples CPU time and misses the end of a job
    log.info("stage %s done, %.2fs CPU", stage, time.process_time())


def _tell_terminal(stage: str, smk, err: Exception) -> None:
    """Print the error's own message (not the traceback) to the terminal Snakemake runs in.

    The rule's log keeps the traceback; setup_logging sent sys.stderr there, so this writes
    to the process's original stderr, which Snakemake shows beside the failed job.
    """
    what = str(err) if isinstance(err, ScunlearnError) else f"{type(err).__name__}: {err}"
    logfile = smk.log[0] if len(smk.log) else None
    tail = f" (traceback in {logfile})" if logfile else ""
    try:
        print(f"scunlearn {stage} error: {what}{tail}", file=sys.__stderr__, flush=True)
    except (OSError, ValueError):
        pass
