"""The report's tables, computed from ``summary.tsv``: the audit's power, the per-cell
method comparison (primary), the paper's tables (II, III, IV) and one table of everything.

Every table is a plain DataFrame with exact numbers (no rounding; the HTML page rounds).
Aggregates are over seeds: means, and the sample SD (ddof=1, NaN with a single seed).
Per-seed CIs are summarised by the mean of their bounds (the CI of a typical seed, not a
CI of the mean: the seeds share the cells and the retrained comparators, so they are not
independent), per-seed p values by their range.

Two rules sit side by side. The primary ``verdict`` of each model comes from the per-cell
audit (:mod:`scunlearn.audit.verdict`); tables show how many seeds got each verdict. The
paper's band rule (:func:`scunlearn.audit.verdict.paper_verdict`) is kept for the paper's
tables: their ``paper_status`` applies it to the group's *mean* MLP-attack AUC and
``paper_success_rate`` is the fraction of seeds whose own ``paper_verdict`` is SUCCESS.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import pandas as pd

from scunlearn import ScunlearnError
from scunlearn.audit.summary import SUMMARY_COLUMNS, VERDICTS
from scunlearn.audit.verdict import paper_verdict, power_summary
from scunlearn.io import read_tsv
from scunlearn.report.captions import TABLES

#: Values ``paper_verdict`` can take (NA: no MLP AUC).
PAPER_VERDICTS = ("LEAK", "NO-LEAK", "TARGET", "SUCCESS", "FAIL", "OVER-UNLEARN", "NA")
#: Outcomes of the per-cell test against retrain.
TEST_OUTCOMES = ("ABOVE", "BELOW", "EQUIVALENT", "UNDECIDED")
#: Columns the report needs; the rest of the contract is added as NaN when absent.
REQUIRED_COLUMNS = [
    "forget_set", "method", "variant", "seed",
    "pc_auc", "pc_auc_ci_low", "pc_auc_ci_high", "delta_vs_retrain", "delta_ci_low", "delta_ci_high",
    "delta_se", "test_vs_retrain", "n_references", "verdict",
    "auc", "auc_ci_low", "auc_ci_high", "floor", "band_low", "band_high", "paper_verdict",
]
#: The fine-tuning control's method: every method is compared with it.
CONTROL_METHOD = "retain_finetune"
#: Methods of Table II, the paper's adversarial methods (Fisher has its own Table III; every
#: other method, the literature's included, is in the method comparison and the full table).
ADVERSARIAL_METHODS = ("frozen_critic", "extragradient")
#: Unlearned methods shown in Table IV besides the baseline and retrain (the paper's choice).
UTILITY_METHODS = ("extragradient", "fisher")
#: Rows of Table IV, in order.
UTILITY_METRICS = ["recon_mse", "marker_mse", "latent_acc", "val_elbo", "wall_s",
                   "max_rss_mb", "cost_vs_retrain", "n_models"]
#: Labels of the "vs fine-tuning" column.
BETTER, NO_BETTER = "better than fine-tuning", "no better than fine-tuning"
BELOW_BOTH = "below fine-tuning, but over-unlearned"


def read_summary(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``summary.tsv`` and check it against the contract, naming the file on error."""
    return validate_summary(read_tsv(path, "summary table"), source=str(path))


def _check_values(summary: pd.DataFrame, col: str, allowed: Iterable[str], source: str) -> None:
    """Raise, naming ``source``, when ``col`` holds a value outside ``allowed``."""
    bad = sorted(set(summary[col].astype(str)) - set(allowed))
    if bad:
        raise ScunlearnError(f"{source}: unknown {col} value(s) {bad}; expected one of {tuple(allowed)}")


def validate_summary(summary: pd.DataFrame, source: str = "summary") -> pd.DataFrame:
    """Check required columns, verdict values and one band per forget set; return a clean copy.

    ``source`` (the file) is named in every error. Optional contract columns that are
    absent are added as NaN so every table can be built; a missing ``paper_verdict`` (read
    as NaN from the TSV's ``NA``) becomes ``"NA"``.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in summary.columns]
    if missing:
        raise ScunlearnError(f"{source}: missing required column(s) {', '.join(missing)}")
    if summary.empty:
        raise ScunlearnError(f"{source}: no rows (no audited models)")
    out = summary.copy()
    out["paper_verdict"] = out["paper_verdict"].fillna("NA")
    _check_values(out, "verdict", VERDICTS, source)
    _check_values(out, "paper_verdict", PAPER_VERDICTS, source)
    _check_values(out, "test_vs_retrain", TEST_OUTCOMES, source)
    for needed in ("baseline", "retrain"):
        if needed not in set(out["method"]):
            raise ScunlearnError(f"{source}: no {needed} models (the audit's controls)")
    bands = out.groupby("forget_set", sort=False)[["floor", "band_low", "band_high"]].nunique()
    if (bands > 1).any().any():
        sets = list(bands.index[(bands > 1).any(axis=1)])
        raise ScunlearnError(f"{source}: floor/band differ within forget set(s) {sets}")
    no_refs = [fs for fs, g in out.groupby("forget_set", sort=False) if g["n_references"].isna().all()]
    if no_refs:
        raise ScunlearnError(f"{source}: n_references missing for forget set(s) {no_refs}")
    for col in SUMMARY_COLUMNS:
        if col not in out.columns:
            out[col] = float("nan")
    out["variant"] = out["variant"].astype(str)
    out["forget_set"] = out["forget_set"].astype(str)
    out["controls_ok"] = out["controls_ok"].map(_truth)
    return out


def _truth(v) -> bool | float:
    """A boolean read from a TSV (True/False/'true'/1), NaN when unknown."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return float("nan") if pd.isna(v) else bool(v)


def status(auc: float, band_low: float, band_high: float, method: str) -> str:
    """The paper's band rule applied to one (mean) MLP-attack AUC: the audit's ``paper_verdict``, reused."""
    return paper_verdict(auc, method, band_low, band_high)


def _rank(method: str) -> int:
    """Display order of a model group: baseline, unlearned variants, the control, retrain."""
    return {"baseline": 0, CONTROL_METHOD: 2, "retrain": 3}.get(method, 1)


def variant_order(summary: pd.DataFrame) -> list[str]:
    """Variants in display order: baseline, unlearned variants as they appear, the control, retrain."""
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


def verdict_counts(verdicts: Iterable[str]) -> str:
    """Seeds per verdict, in the order of :data:`VERDICTS`: e.g. ``"2 SUCCESS, 1 INCONCLUSIVE"``."""
    v = pd.Series(list(verdicts), dtype=object)
    counts = v.value_counts()
    return ", ".join(f"{int(counts[k])} {k}" for k in VERDICTS if k in counts.index)


def aggregate(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (forget set, variant): means/SDs over seeds of both attacks, verdicts, utility, cost.

    ``paper_status`` is the paper's rule on the mean MLP AUC; ``paper_success_rate`` the share of
    seeds whose ``paper_verdict`` is SUCCESS (NaN for baseline and retrain, which are not
    unlearning methods). ``cost_vs_retrain`` is the mean of the models' own ratios (summary), as is
    ``setup_cost_vs_retrain`` (a method's up-front job, e.g. sisa's shard training; NaN for others).
    """
    g = summary.groupby(["forget_set", "variant"], sort=False)
    agg = g.agg(
        method=("method", "first"),
        n_seeds=("seed", "size"),
        pc_auc_mean=("pc_auc", "mean"),
        pc_auc_sd=("pc_auc", "std"),
        pc_auc_ci_low_mean=("pc_auc_ci_low", "mean"),
        pc_auc_ci_high_mean=("pc_auc_ci_high", "mean"),
        delta_mean=("delta_vs_retrain", "mean"),
        delta_ci_low_mean=("delta_ci_low", "mean"),
        delta_ci_high_mean=("delta_ci_high", "mean"),
        p_vs_retrain_min=("p_vs_retrain", "min"),
        p_vs_retrain_max=("p_vs_retrain", "max"),
        dft_mean=("delta_vs_finetune", "mean"),
        dft_ci_low_mean=("dft_ci_low", "mean"),
        dft_ci_high_mean=("dft_ci_high", "mean"),
        p_vs_finetune_max=("p_vs_finetune", "max"),
        forget_gap_closed=("forget_gap_closed", "mean"),
        verdicts=("verdict", verdict_counts),
        n_success=("verdict", lambda v: int((v == "SUCCESS").sum())),
        auc_mean=("auc", "mean"),
        auc_sd=("auc", "std"),
        auc_ci_low_mean=("auc_ci_low", "mean"),
        auc_ci_high_mean=("auc_ci_high", "mean"),
        tpr_at_1pct_fpr=("tpr_at_1pct_fpr", "mean"),
        pc_tpr_at_1pct_fpr=("pc_tpr_at_1pct_fpr", "mean"),
        loss_attack_auc=("loss_attack_auc", "mean"),
        floor=("floor", "first"),
        band_low=("band_low", "first"),
        band_high=("band_high", "first"),
        paper_success_rate=("paper_verdict", lambda v: float((v == "SUCCESS").mean())),
        recon_mse=("recon_mse", "mean"),
        marker_mse=("marker_mse", "mean"),
        latent_acc=("latent_acc", "mean"),
        val_elbo=("val_elbo", "mean"),
        wall_s=("wall_s", "mean"),
        max_rss_mb=("max_rss_mb", "mean"),
        cost_vs_retrain=("cost_vs_retrain", "mean"),
        # dp_retrain's privacy: the weakest guarantee among the seeds (they share q, σ, δ; steps may differ)
        dp_epsilon=("dp_epsilon", "max"),
        dp_delta=("dp_delta", "max"),
        setup_cost_vs_retrain=("setup_cost_vs_retrain", "mean"),
    ).reset_index()
    agg["gap_to_floor"] = agg["auc_mean"] - agg["floor"]
    agg["paper_status"] = [status(a, lo, hi, m) for a, lo, hi, m in
                           agg[["auc_mean", "band_low", "band_high", "method"]].itertuples(index=False)]
    agg["paper_vs_verdicts"] = [paper_vs_verdicts(p, v) for p, v in zip(agg["paper_status"], agg["verdicts"])]
    agg.loc[agg["method"].isin(["baseline", "retrain"]), "paper_success_rate"] = float("nan")
    return _sort(agg, summary)


def vs_finetune(method: str, dft_ci_low: float, dft_ci_high: float, delta_ci_high: float = float("nan")) -> str:
    """The "vs fine-tuning" label of a variant from its Δ vs the fine-tuning control's CI.

    Δ = AUC(method) − AUC(control), so lower is closer to forgetting. "better than
    fine-tuning" only when the CI lies wholly below 0; when the variant is also wholly
    below retrain (``delta_ci_high`` < 0) it went past the goal, which is not better.
    Baseline and retrain get "", the control itself "control", a study without a
    control "no control in this study".
    """
    if method in ("baseline", "retrain"):
        return ""
    if method == CONTROL_METHOD:
        return "control"
    if pd.isna(dft_ci_low) or pd.isna(dft_ci_high):
        return "no control in this study"
    if dft_ci_high < 0:
        return BELOW_BOTH if (pd.notna(delta_ci_high) and delta_ci_high < 0) else BETTER
    return NO_BETTER


def costs_more(cost_vs_retrain: float) -> bool:
    """True when a variant's wall time exceeds retraining's (then unlearning is not worth it)."""
    return bool(pd.notna(cost_vs_retrain) and cost_vs_retrain > 1)


#: Columns of the method comparison table, in order.
COMPARISON_COLUMNS = [
    "forget_set", "variant", "method", "n_seeds",
    "pc_auc_mean", "pc_auc_sd", "pc_auc_ci_low_mean", "pc_auc_ci_high_mean",
    "delta_mean", "delta_ci_low_mean", "delta_ci_high_mean", "p_vs_retrain_min", "p_vs_retrain_max",
    "dft_mean", "dft_ci_low_mean", "dft_ci_high_mean", "p_vs_finetune_max", "vs_finetune",
    "forget_gap_closed", "verdicts", "n_success",
    "latent_acc", "recon_mse", "val_elbo", "wall_s", "cost_vs_retrain", "costs_more_than_retrain",
    "dp_epsilon", "dp_delta",
    "setup_cost_vs_retrain",
]


def table_comparison(summary: pd.DataFrame) -> pd.DataFrame:
    """The primary table: per forget set × variant, the per-cell audit against retrain and the
    fine-tuning control, the share of the forget gap closed, the seeds' verdicts, utility and cost.

    Rows run baseline, unlearning variants, the control, retrain within each forget set, so
    every variant's utility stands beside the control's and retrain's.
    """
    agg = aggregate(validate_summary(summary))
    agg["vs_finetune"] = [vs_finetune(m, lo, hi, d) for m, lo, hi, d in
                          agg[["method", "dft_ci_low_mean", "dft_ci_high_mean",
                               "delta_ci_high_mean"]].itertuples(index=False)]
    # only unlearning (and the control) can be weighed against retraining; the baseline is a given
    agg["costs_more_than_retrain"] = [costs_more(c) and m not in ("baseline", "retrain")
                                      for m, c in zip(agg["method"], agg["cost_vs_retrain"])]
    return agg[COMPARISON_COLUMNS]


def table_power(summary: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """The audit's power on this study, one row per forget set (:func:`scunlearn.audit.verdict.power_summary`)."""
    summary = validate_summary(summary)
    return power_summary(summary, alpha).reset_index(drop=True)


def check_forget_set(summary: pd.DataFrame, forget_set: str) -> None:
    """Raise a clear error when ``forget_set`` has no rows in the summary."""
    if forget_set not in set(summary["forget_set"]):
        raise ScunlearnError(
            f"forget set {forget_set!r} not in the summary (have {forget_set_order(summary)})")


def main_forget_set(summary: pd.DataFrame, forget_set: str | None = None) -> str:
    """The forget set of Table II / the MLP comparison figure: the one asked for, else structured, else the first."""
    if forget_set is not None:
        check_forget_set(summary, forget_set)
        return forget_set
    sets = forget_set_order(summary)
    return "structured" if "structured" in sets else sets[0]


#: Columns shared by the paper's tables: the paper's numbers, then the per-cell audit beside them.
_PAPER_COLS = ["auc_mean", "auc_sd", "floor", "gap_to_floor", "paper_status", "paper_vs_verdicts",
               "paper_success_rate", "pc_auc_mean", "verdicts", "n_seeds"]
#: ``paper_vs_verdicts`` of a row whose paper status no seed's per-cell verdict shares.
DIFFERS = "differs"


def paper_vs_verdicts(paper_status: str, verdicts: str) -> str:
    """:data:`DIFFERS` when the paper's band rule (on the mean MLP AUC) names an outcome that none of the
    group's per-cell verdicts (``verdict_counts`` text) has, else "": the paper's status is its band rule
    only, and a reader must not take its SUCCESS for the audit's. NO-LEAK (the baseline not caught)
    matches INCONCLUSIVE; NA (no MLP AUC) differs from nothing."""
    kinds = {part.split(" ", 1)[1] for part in str(verdicts).split(", ") if " " in part}
    if paper_status == "NA" or not kinds:
        return ""
    same = {"NO-LEAK": "INCONCLUSIVE"}.get(paper_status, paper_status)
    return "" if same in kinds else DIFFERS


def table_adversarial(summary: pd.DataFrame, forget_set: str = "structured",
                      methods: Iterable[str] = ADVERSARIAL_METHODS) -> pd.DataFrame:
    """Paper Table II: baseline, each adversarial variant (of ``methods``) and retrain on one forget set."""
    summary = validate_summary(summary)
    check_forget_set(summary, forget_set)
    agg = aggregate(summary)
    keep = (agg["forget_set"] == forget_set) & agg["method"].isin(["baseline", "retrain", *methods])
    return agg.loc[keep, ["variant", "method", *_PAPER_COLS]].reset_index(drop=True)


#: Methods of Table III (Fisher scrubbing and its noisy variant).
FISHER_METHODS = ("fisher", "fisher_noise")


def table_fisher(summary: pd.DataFrame, methods: Iterable[str] = FISHER_METHODS) -> pd.DataFrame:
    """Paper Table III: per forget set, mean and SD over seeds of the AUC of Fisher variants."""
    agg = aggregate(validate_summary(summary))
    cols = ["forget_set", "variant", *_PAPER_COLS[:3], "band_low", "band_high", *_PAPER_COLS[3:]]
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
    """Every variant × forget set: both attacks side by side, utility and cost vs retrain."""
    cols = ["forget_set", "variant", "method", "n_seeds",
            "pc_auc_mean", "pc_auc_sd", "delta_mean", "verdicts", "forget_gap_closed",
            "auc_mean", "auc_sd", "auc_ci_low_mean", "auc_ci_high_mean", "floor", "band_low",
            "band_high", "paper_status", "paper_vs_verdicts", "paper_success_rate", "pc_tpr_at_1pct_fpr",
            "tpr_at_1pct_fpr",
            "loss_attack_auc", "recon_mse", "marker_mse", "latent_acc", "val_elbo", "wall_s",
            "cost_vs_retrain"]
    return aggregate(validate_summary(summary))[cols]


def gap_closed_text(v) -> str:
    """The share of the forget gap closed as table text: 3 decimals on its 0–1 scale, and off the scale
    marked, so that 13.4 does not read as a score: ``13.4 (overshoots)`` (past retraining, over-unlearned)
    or ``-0.2 (widens the gap)`` (further from retraining than the baseline); a dash when unknown."""
    if v is None or pd.isna(v):
        return "—"
    v = float(v)
    if v > 1 + 1e-9:
        return f"{v:.3g} (overshoots)"
    if v < -1e-9:
        return f"{v:.3g} (widens the gap)".replace("-", "−")
    return f"{v:.3f}".replace("-0.000", "0.000")


def _cost_text(cost) -> str:
    if cost is None or pd.isna(cost):
        return "at an unknown cost"
    return f"at {cost:.2g}× the cost of retraining" + (", more than retraining itself" if cost > 1 else "")


#: ``findings`` kinds: a SUCCESS, the best not significantly different from retrain, the closest of the others.
FINDING_KINDS = ("success", "not_worse", "closest", "none")


def findings(verdicts: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per forget set, the report's first answer: which method is best, at what cost, and were the controls sound.

    From ``verdicts.tsv`` (one verdict per variant; the equivalence control and NOT-COMPARABLE
    variants are never named best) and ``summary.tsv`` (``cost_vs_retrain``, mean of the variant's
    models; ``controls_ok``). The best is the SUCCESS variant with the smallest |Δ| (ties: the
    cheaper); else (``not_worse``) the INCONCLUSIVE variant, not significantly different from
    retrain, closest to closing the whole gap (smallest |Δ|: overshooting counts as falling short);
    else (``closest``) the variant with the smallest |Δ| of the rest. One row per forget set:
    forget_set, kind, variant, verdict, delta, gap_closed, cost_vs_retrain, controls_ok,
    equivalence_control (the retrained models' own verdict as a method), sentence (plain text).
    """
    from scunlearn.audit.variants import RETRAIN_AS_METHOD

    cost = summary.groupby(["forget_set", "variant"])["cost_vs_retrain"].mean()
    ok = summary.groupby("forget_set")["controls_ok"].first().map(_truth)
    rows = []
    for fs, g in verdicts.groupby("forget_set", sort=False):
        eq = g.loc[g["variant"] == RETRAIN_AS_METHOD, "verdict"]
        cands = g[(g["variant"] != RETRAIN_AS_METHOD) & (g["verdict"] != "NOT-COMPARABLE")].copy()
        cands["cost"] = [cost.get((fs, v), np.nan) for v in cands["variant"]]
        cands["size"] = cands["delta"].abs()
        cands = cands.sort_values(["size", "cost"], na_position="last", kind="stable")
        best, kind = None, "none"
        for k, pick in (("success", cands["verdict"] == "SUCCESS"), ("not_worse", cands["verdict"] == "INCONCLUSIVE"),
                        ("closest", cands["delta"].notna())):
            if pick.any():
                best, kind = cands[pick].iloc[0], k
                break
        controls = ok.get(fs, np.nan)
        row = {"forget_set": fs, "kind": kind, "variant": "", "verdict": "", "delta": np.nan, "gap_closed": np.nan,
               "cost_vs_retrain": np.nan, "controls_ok": controls,
               "equivalence_control": str(eq.iloc[0]) if len(eq) else ""}
        if best is None:
            text = "no comparable method was audited on this set."
        else:
            row.update(variant=str(best["variant"]), verdict=str(best["verdict"]), delta=float(best["delta"]),
                       gap_closed=float(best["gap_closed"]), cost_vs_retrain=float(best["cost"]))
            delta = f"Δ {best['delta']:+.3g} vs retrain".replace("-", "−")
            what = (f"{best['verdict']}: {delta}, within the margin ±{best['margin']:.3g}" if kind == "success"
                    else f"{best['verdict']}: {delta}, gap closed {gap_closed_text(best['gap_closed'])}")
            text = {
                "success": f"{best['variant']} forgot as retraining would ({what}), {_cost_text(best['cost'])}.",
                "not_worse": (f"no method is shown to forget as retraining would; the best is {best['variant']}, "
                              f"not significantly different from retraining ({what}), {_cost_text(best['cost'])}."),
                "closest": (f"no method forgot this set as retraining would; the closest was {best['variant']} "
                            f"({what}), {_cost_text(best['cost'])}."),
            }[kind]
            n_ok = int((cands["verdict"] == "SUCCESS").sum())
            if kind == "success" and n_ok > 1:
                text = text[:-1] + f"; {n_ok} variants succeeded, this one nearest to retraining."
        if pd.isna(controls):
            text += " The judge's controls were not recorded."
        elif controls:
            text += " The judge's controls passed"
            text += {"SUCCESS": ", and so did the equivalence control.", "": "."}.get(
                row["equivalence_control"], f", but the equivalence control did not ({row['equivalence_control']}): "
                                            "this study cannot certify even retrained models.")
        else:
            text += " The judge's controls FAILED: nothing on this set can be called SUCCESS."
        rows.append({**row, "sentence": f"{fs}: {text}"})
    cols = ["forget_set", "kind", "variant", "verdict", "delta", "gap_closed", "cost_vs_retrain", "controls_ok",
            "equivalence_control", "sentence"]
    return pd.DataFrame(rows, columns=cols)


#: Table file stem -> title shown on the HTML page (from :mod:`.captions`).
TABLE_TITLES = {stem: title for stem, (title, _) in TABLES.items()}
#: The paper's tables, in page order.
PAPER_TABLES = ["table2_adversarial", "table3_fisher", "table4_utility", "table_all"]


def build_tables(summary: pd.DataFrame, forget_set: str | None = None, alpha: float = 0.05) -> dict[str, pd.DataFrame]:
    """All report tables keyed by file stem, in :data:`TABLES` order; Table II uses ``forget_set``
    (default: structured if present, else the first); ``alpha``: the audit's level (``audit.alpha``)."""
    summary = validate_summary(summary)
    fs = main_forget_set(summary, forget_set)
    tables = {
        "audit_power": table_power(summary, alpha),
        "method_comparison": table_comparison(summary),
        "table2_adversarial": table_adversarial(summary, fs),
        "table3_fisher": table_fisher(summary),
        "table4_utility": table_utility(summary),
        "table_all": table_all(summary),
    }
    assert list(tables) == list(TABLES), "captions.TABLES and build_tables disagree"
    return tables
