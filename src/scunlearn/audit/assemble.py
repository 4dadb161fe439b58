"""The audit's assembly: the shared data of an audit job, one model's record, a forget set's
per-cell statistics for the controls.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np

from scunlearn.io import read_cells, read_markers

log = logging.getLogger(__name__)


def audit_shared(inp, params, device) -> dict:
    """What every model of an audit job shares: data, partition, negatives, fold groups, references."""
    from scunlearn.audit.attacks import mlp_fold_groups
    from scunlearn.membership.matched import matched_fold_groups, read_matched
    from scunlearn.vae.cellstats import read_cell_stats
    from scunlearn.vae.train import load_experiment

    adata, X, part = load_experiment(inp, device)
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
    from scunlearn.audit.attacks.per_cell import cell_statistic
    from scunlearn.data.splits import load_partition
    from scunlearn.membership.matched import read_matched
    from scunlearn.vae.cellstats import read_cell_stats

    adata = read_cells(inp["adata"])
    part = load_partition(adata, inp["split"], inp["forget"])
    _, neg, _ = read_matched(inp["matched"], adata, part.audit)
    types = adata.obs["cell_type"].astype(str).to_numpy()

    def stats(paths, names):
        return {n: cell_statistic(read_cell_stats(p, adata.obs_names), statistic) for n, p in zip(names, paths)}

    return {"retrain": stats(inp["ref_retrain"], inp["names_retrain"]),
            "baselines": stats(inp["ref_baseline"], inp["names_baseline"]),
            "pos": part.forget, "negatives": audit_negatives(part, neg, types), "types": types}


def audit_model(shared: dict, params: dict, model_path, cells_path, bench_path, model_seed: int,
                 self_name: str | None, exclude: tuple = ()) -> dict:
    """One model's audit record: every configured attack (the per-cell calibrated one first), then utility.
    ``exclude``: retrained references the model must not be compared with (its own seed's, for a method)."""
    from scunlearn.audit.attacks import get_attack
    from scunlearn.audit.data import AuditData
    from scunlearn.audit.utility import model_utility
    from scunlearn.audit.variants import record_margin
    from scunlearn.costs import read_benchmark
    from scunlearn.vae.cellstats import read_cell_stats
    from scunlearn.vae.checkpoints import check_genes, load_checkpoint

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
        seed=seed, alpha=cfg["alpha"], margin=record_margin(cfg["equivalence_margin"]), bootstrap=cfg["bootstrap"],
        target_stats=read_cell_stats(cells_path, adata.obs_names),
        retrain_stats=own["retrain_stats"], baseline_stats=own["baseline_stats"],
        control_stats=own["control_stats"], self_name=self_name, exclude=tuple(exclude),
        cell_types=own["types"],
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
    # machine-independent cost (scunlearn.methods.compute): a trained model's cell passes are its epochs × cells
    passes = meta.get("report", {}).get("cell_passes")
    if passes is None and "epochs_run" in meta and "n_train" in meta:
        passes = int(meta["epochs_run"]) * int(meta["n_train"])
    wall, rss = bench.get("s", float("nan")), bench.get("max_rss", float("nan"))
    return {
        "run": params["run"], "dataset": params["dataset"], "forget_set": params["forget"],
        "method": params["method"], "variant": params["variant"],
        "param_hash": meta.get("param_hash", ""), "seed": model_seed,
        **record, **util, **meta.get("report", {}), "cell_passes": passes, "n_forget": int(len(part.forget)),
        "n_negatives": int(len(shared["neg"])), "n_negatives_cell_type": int(len(shared["negatives"]["cell_type"])),
        "n_audit": int(len(part.audit)), "wall_s": wall, "max_rss_mb": rss, "model": str(model_path),
    }
