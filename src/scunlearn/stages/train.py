"""Stages of the training rules: baseline and retrain (solo or seed-batched) and the matched negatives."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from scunlearn import ScunlearnError
from scunlearn.io import read_cells, write_json, write_tsv
from scunlearn.stages import param_hash

log = logging.getLogger(__name__)


def stage_train(inp, out, params, threads):
    """Baseline (no forget set given) or retrain (forget cells removed) — the same recipe."""
    from scunlearn.stages.common import setup_job, write_cells
    from scunlearn.vae.checkpoints import save_checkpoint
    from scunlearn.vae.model import VAEConfig, build_vae
    from scunlearn.vae.train import fit

    seed, device, adata, X, part = setup_job(inp, params, threads)
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
    write_cells(model, X, adata, out)
    save_checkpoint(model, out["model"], meta)


def stage_train_ensemble(inp, out, params, threads):
    """All seeds of one training recipe (the baseline, or one forget set's retrain) in one job, trained at
    once as one batched model (:func:`scunlearn.vae.batched.fit_ensemble`): per seed, the checkpoint, history
    and per-cell statistics that :func:`stage_train` writes for that seed alone (``out``'s lists, in
    the order of ``params["seeds"]``)."""
    from scunlearn.costs import log_units
    from scunlearn.stages.common import setup_job, write_cells
    from scunlearn.vae.batched import fit_ensemble
    from scunlearn.vae.checkpoints import save_checkpoint
    from scunlearn.vae.model import VAEConfig

    seeds = [int(s) for s in params["seeds"]]
    files = {k: [out[k]] if isinstance(out[k], (str, Path)) else list(out[k]) for k in ("model", "history", "cells")}
    for k, paths in files.items():
        if len(paths) != len(seeds):
            raise ScunlearnError(f"train ensemble: {len(paths)} {k} outputs for {len(seeds)} seeds {seeds}")
    _, device, adata, X, part = setup_job(inp, {**params, "seed": seeds[0]}, threads)
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
        write_cells(model, X, adata, {"cells": files["cells"][i]})
        save_checkpoint(model, files["model"][i], meta)


def stage_matched(inp, out, params, threads):
    """Matched negatives in the preprocessed PCA: a representation no model trained, blind to membership."""
    from scunlearn.data.splits import load_partition
    from scunlearn.membership.matched import fold_groups_record, matched_negatives

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
