"""The paper's tables (II, III, IV) and one table of everything, computed from ``summary.tsv``.

Every table is a plain DataFrame with exact numbers (no rounding; the HTML page rounds).
Aggregates are over seeds: means, and the sample SD (ddof=1, NaN with a single seed).
A group's ``status`` applies the per-model verdict rule to the group's *mean* AUC, while
``success_rate`` is the fraction of its seeds whose own verdict (from the summary) is
SUCCESS; it is NaN for the baseline and retrain, which are not unlearning methods.
"""

from __future__ import annotations

import os
from typing import Iterable

import pandas as pd

from .. import ScunlearnError
from ..audit.verdict import verdict
from ..io import read_tsv

#: The columns of the public ``report/summary.tsv`` contract (README, "Outputs").
SUMMARY_COLUMNS = [
    "run", "dataset", "forget_set", "method", "variant", "param_hash", "seed",
    "auc", "auc_sd", "auc_ci_low", "auc_ci_high", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr",
    "loss_attack_auc", "floor", "floor_sd", "floor_min", "floor_max", "band_low",
    "band_high", "verdict", "ci_overlaps_floor_range", "n_forget", "n_negatives",
    "recon_mse", "marker_mse", "val_elbo", "latent_acc", "wall_s", "max_rss_mb",
]
#: Columns the report needs; the rest of the contract is carried through untouched.
REQUIRED_COLUMNS = [
    "forget_set", "method", "variant", "seed", "auc", "auc_ci_low", "auc_ci_high",
    "floor", "band_low", "band_high", "verdict",
]
VERDICTS = ("LEAK", "TARGET", "SUCCESS", "FAIL", "OVER-UNLEARN")
#: Methods left out of Table II (adversarial methods): Fisher has its own Table III.
NON_ADVERSARIAL = ("fisher",)
#: Unlearned methods shown in Table IV besides the baseline and retrain (the paper's choice).
UTILITY_METHODS = ("extragradient", "fisher")
#: Rows of Table IV, in order.
UTILITY_METRICS = ["recon_mse", "marker_mse", "latent_acc", "val_elbo", "wall_s",
                   "max_rss_mb", "cost_vs_retrain", "n_models"]


def read_summary(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``summary.tsv`` and check it against the contract, naming the file on error."""
    return validate_summary(read_tsv(path, "summary table"), source=str(path))


def validate_summary(summary: pd.DataFrame, source: str = "summary") -> pd.DataFrame:
    """Check required columns, verdict values and one band per forget set; return a clean copy.

    Optional contract columns that are absent are added as NaN so every table can be built.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in summary.columns]
    if missing:
        raise ScunlearnError(f"{source}: missing required column(s) {', '.join(missing)}")
    if summary.empty:
        raise ScunlearnError(f"{source}: no rows (no audited models)")
    bad = sorted(set(summary["verdict"]) - set(VERDICTS))
    if bad:
        raise ScunlearnError(f"{source}: unknown verdict(s) {bad}; expected one of {VERDICTS}")
    bands = summary.groupby("forget_set", sort=False)[["floor", "band_low", "band_high"]].nunique()
    if (bands > 1).any().any():
        sets = list(bands.index[(bands > 1).any(axis=1)])
        raise ScunlearnError(f"{source}: floor/band differ within forget set(s) {sets}")
    out = summary.copy()
    for col in SUMMARY_COLUMNS:
        if col not in out.columns:
            out[col] = float("nan")
    out["variant"] = out["variant"].astype(str)
    out["forget_set"] = out["forget_set"].astype(str)
    return out


def status(auc: float, band_low: float, band_high: float, method: str) -> str:
    """The verdict rule (README, "What the audit does") applied to one AUC — the audit's own rule, reused."""
    return verdict(auc, method, band_low, band_high)


def _rank(method: str) -> int:
    """Display order of a model group: baseline, unlearned variants, retrain."""
    return {"baseline": 0, "retrain": 2}.get(method, 1)


def variant_order(summary: pd.DataFrame) -> list[str]:
    """Variants in display order: baseline, then unlearned variants as they appear, retrain last."""
    first = summary.drop_duplicates("variant")[["variant", "method"]]
    ranked = sorted(enumerate(first.itertuples(index=False)), key=lambda t: (_rank(t[1].method), t[0]))
    return [row.variant for _, row in ranked]


def forget_set_order(summary: pd.DataFrame) -> list[str]:
    """Forget sets in order of first appearance in the summary."""
    return list(dict.fromkeys(summary["forget_set"]))


def _sort(df: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Sort aggregated rows by forget set (appearance) then variant display order."""
    pos = {"forget_set": {f: i for i, f in enumerate(forget_set_order(summary))},
           "variant": {v: i for i, v in enumerate(variant_order(summary))}}
    return df.sort_values(["forget_set", "variant"],
                          key=lambda s: s.map(pos[s.name])).reset_index(drop=True)


def aggregate(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (forget set, variant): means/SDs over seeds, status, success rate, cost.

    ``cost_vs_retrain`` is the variant's mean wall time over the mean wall time of the
    retrain models of the same forget set (NaN where either is unknown).
    """
    g = summary.groupby(["forget_set", "variant"], sort=False)
    agg = g.agg(
        method=("method", "first"),
        n_seeds=("seed", "size"),
        auc_mean=("auc", "mean"),
        auc_sd=("auc", "std"),
        auc_ci_low_mean=("auc_ci_low", "mean"),
        auc_ci_high_mean=("auc_ci_high", "mean"),
        tpr_at_1pct_fpr=("tpr_at_1pct_fpr", "mean"),
        loss_attack_auc=("loss_attack_auc", "mean"),
        floor=("floor", "first"),
        band_low=("band_low", "first"),
        band_high=("band_high", "first"),
        success_rate=("verdict", lambda v: float((v == "SUCCESS").mean())),
        recon_mse=("recon_mse", "mean"),
        marker_mse=("marker_mse", "mean"),
        latent_acc=("latent_acc", "mean"),
        val_elbo=("val_elbo", "mean"),
        wall_s=("wall_s", "mean"),
        max_rss_mb=("max_rss_mb", "mean"),
    ).reset_index()
    agg["gap_to_floor"] = agg["auc_mean"] - agg["floor"]
    agg["status"] = [status(a, lo, hi, m) for a, lo, hi, m in
                     agg[["auc_mean", "band_low", "band_high", "method"]].itertuples(index=False)]
    agg.loc[agg["method"].isin(["baseline", "retrain"]), "success_rate"] = float("nan")
    retrain_wall = summary[summary["method"] == "retrain"].groupby("forget_set")["wall_s"].mean()
    agg["cost_vs_retrain"] = agg["wall_s"] / agg["forget_set"].map(retrain_wall)
    return _sort(agg, summary)


def check_forget_set(summary: pd.DataFrame, forget_set: str) -> None:
    """Raise a clear error when ``forget_set`` has no rows in the summary."""
    if forget_set not in set(summary["forget_set"]):
        raise ScunlearnError(
            f"forget set {forget_set!r} not in the summary (have {forget_set_order(summary)})")


def main_forget_set(summary: pd.DataFrame, forget_set: str | None = None) -> str:
    """The forget set of Table II / Fig. 2: the one asked for, else structured, else the first."""
    if forget_set is not None:
        check_forget_set(summary, forget_set)
        return forget_set
    sets = forget_set_order(summary)
    return "structured" if "structured" in sets else sets[0]


def table_adversarial(summary: pd.DataFrame, forget_set: str = "structured",
                      exclude_methods: Iterable[str] = NON_ADVERSARIAL) -> pd.DataFrame:
    """Paper Table II: baseline, each adversarial variant and retrain on one forget set.

    Adversarial = every variant whose method is not baseline, retrain or in ``exclude_methods``.
    """
    summary = validate_summary(summary)
    check_forget_set(summary, forget_set)
    agg = aggregate(summary)
    keep = (agg["forget_set"] == forget_set) & ~agg["method"].isin(list(exclude_methods))
    cols = ["variant", "method", "auc_mean", "auc_sd", "floor", "gap_to_floor", "status",
            "success_rate", "n_seeds"]
    return agg.loc[keep, cols].reset_index(drop=True)


def table_fisher(summary: pd.DataFrame, methods: Iterable[str] = ("fisher",)) -> pd.DataFrame:
    """Paper Table III: per forget set, mean and SD over seeds of the AUC of Fisher variants."""
    agg = aggregate(validate_summary(summary))
    cols = ["forget_set", "variant", "auc_mean", "auc_sd", "floor", "band_low", "band_high",
            "gap_to_floor", "status", "success_rate", "n_seeds"]
    return agg.loc[agg["method"].isin(list(methods)), cols].reset_index(drop=True)


def table_utility(summary: pd.DataFrame, methods: Iterable[str] = UTILITY_METHODS) -> pd.DataFrame:
    """Paper Table IV: utility and cost, one column per model group, one row per metric.

    Groups: baseline, every variant of ``methods`` (paper: extragradient, Fisher), retrain.
    Values are means over all models of the group, all forget sets pooled (per-forget-set
    values are in :func:`table_all`). ``cost_vs_retrain`` = mean wall time / retrain's.
    """
    summary = validate_summary(summary)
    keep = summary["method"].isin(["baseline", "retrain", *methods])
    sub = summary[keep]
    g = sub.groupby("variant", sort=False)
    wide = g[UTILITY_METRICS[:6]].mean()
    retrain_wall = sub.loc[sub["method"] == "retrain", "wall_s"].mean()
    wide["cost_vs_retrain"] = wide["wall_s"] / retrain_wall
    wide["n_models"] = g.size()
    order = [v for v in variant_order(summary) if v in wide.index]
    table = wide.loc[order, UTILITY_METRICS].T
    table.index.name = "metric"
    table.columns.name = None
    return table


def table_all(summary: pd.DataFrame) -> pd.DataFrame:
    """Every variant x forget set: AUC with mean CI, success rate, utility and cost vs retrain."""
    cols = ["forget_set", "variant", "method", "n_seeds", "auc_mean", "auc_sd",
            "auc_ci_low_mean", "auc_ci_high_mean", "floor", "band_low", "band_high", "status",
            "success_rate", "tpr_at_1pct_fpr", "loss_attack_auc", "recon_mse", "marker_mse",
            "latent_acc", "wall_s", "cost_vs_retrain"]
    return aggregate(validate_summary(summary))[cols]


#: Table file stem -> title shown on the HTML page.
TABLE_TITLES = {
    "table2_adversarial": "Table II. Adversarial unlearning on the {forget_set} forget set",
    "table3_fisher": "Table III. Fisher scrubbing by forget set",
    "table4_utility": "Table IV. Utility and cost (means over models, forget sets pooled)",
    "table_all": "Every variant × forget set: AUC, CI, success rate, utility and cost",
}


def build_tables(summary: pd.DataFrame, forget_set: str | None = None) -> dict[str, pd.DataFrame]:
    """All report tables keyed by file stem; Table II uses ``forget_set`` (default: structured
    if present, else the first forget set)."""
    summary = validate_summary(summary)
    fs = main_forget_set(summary, forget_set)
    return {
        "table2_adversarial": table_adversarial(summary, fs),
        "table3_fisher": table_fisher(summary),
        "table4_utility": table_utility(summary),
        "table_all": table_all(summary),
    }
