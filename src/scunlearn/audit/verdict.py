"""Verdicts per model from the per-cell audit's statistics, the study's controls, and the paper's band rule.

``verdict`` (primary) comes from the paired test against retrain in each audit record
(:mod:`scunlearn.audit.calibrated`): LEAK / FAIL when the model scores significantly
above the retrained models, OVER-UNLEARN significantly below, SUCCESS only when
equivalence within the margin is shown *and* this study's controls passed (every
baseline seed caught, no retrained seed flagged at α / number of retrained seeds),
INCONCLUSIVE otherwise.
``paper_verdict`` keeps the paper's rule (MLP AUC within the retrain floor ± tolerance)
for comparison with the paper.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scunlearn.audit.calibrated import verdict as stat_verdict


def floor_stats(retrain_aucs) -> dict:
    """Floor = mean retrain AUC over seeds, with SD and range."""
    a = np.asarray(retrain_aucs, dtype=float)
    if a.size == 0:
        raise ValueError("no retrain models: the floor is undefined")
    return {"floor": float(a.mean()), "floor_sd": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "floor_min": float(a.min()), "floor_max": float(a.max())}


#: AUCs within this of a band edge count as in band (float noise in floor ± tolerance)
EDGE_EPS = 1e-9


def paper_verdict(auc: float, method: str, band_low: float, band_high: float) -> str:
    """The paper's rule on the MLP AUC: TARGET for retrain; SUCCESS in band (edges included),
    OVER-UNLEARN below, FAIL above; the baseline (never unlearned) is LEAK above the band, else NO-LEAK."""
    if method == "retrain":
        return "TARGET"
    if pd.isna(auc):
        return "NA"
    if auc > band_high + EDGE_EPS:
        return "LEAK" if method == "baseline" else "FAIL"
    if method == "baseline":
        return "NO-LEAK"
    if auc < band_low - EDGE_EPS:
        return "OVER-UNLEARN"
    return "SUCCESS"


def controls(g: pd.DataFrame, alpha: float = 0.05) -> dict:
    """This forget set's controls: baseline seeds caught (positive) and retrained seeds flagged (negative).

    From the ``controls_*`` columns when the rows carry them (the counts over every seed,
    reference seeds included, by the controls stage: :mod:`scunlearn.audit.controls`), else
    from the rows' own seeds. Every baseline seed must be caught at ``alpha``. The negative control is one test per
    retrained seed, so a retrained seed counts as a false alarm when its test flagged it
    (``test_vs_retrain`` ABOVE / BELOW) at ``p_vs_retrain`` below ``alpha / n_retrain``
    (Bonferroni): a sound audit then fails its own control with probability at most
    ``alpha``, not ~``n_retrain · alpha`` (with two seeds at 0.05 each, one study in ten).
    """
    if "controls_n_baseline" in g and g["controls_n_baseline"].notna().any():
        first = g.iloc[0]
        caught, n_base = int(first["controls_baseline_caught"]), int(first["controls_n_baseline"])
        alarms, n_ret = int(first["controls_false_alarms"]), int(first["controls_n_retrain"])
        return {"baseline_caught": caught, "n_baseline": n_base, "retrain_false_alarms": alarms,
                "n_retrain": n_ret, "controls_ok": bool(n_base and n_ret and caught == n_base and alarms == 0)}
    base = g[g["method"] == "baseline"]
    ret = g[g["method"] == "retrain"]
    caught = int((base["test_vs_retrain"] == "ABOVE").sum())
    flagged = ret["test_vs_retrain"].isin(["ABOVE", "BELOW"])
    if len(ret) and "p_vs_retrain" in ret:
        flagged &= ~(ret["p_vs_retrain"] >= alpha / len(ret))  # NaN p: the record's own test decides
    alarms = int(flagged.sum())
    return {"baseline_caught": caught, "n_baseline": len(base), "retrain_false_alarms": alarms,
            "n_retrain": len(ret), "controls_ok": bool(len(base) and caught == len(base) and alarms == 0)}


NOT_COMPARABLE = "NOT-COMPARABLE"


def comparable(method: str) -> bool:
    """Whether the per-cell audit's references (retrained single VAEs) are of this method's model class.

    A registered method says so (``MethodSpec.audit_comparable``: False for sisa's shard
    ensemble and dp_retrain's DP-trained VAE); baseline, retrain and unknown methods are.
    """
    from scunlearn.methods import REGISTRY

    spec = REGISTRY.get(method)
    return True if spec is None else spec.audit_comparable


def add_verdicts(df: pd.DataFrame, tolerance: float, alpha: float = 0.05) -> pd.DataFrame:
    """Add verdict, paper_verdict (with floor and band), controls, gap closed and cost columns, per forget set.

    ``cost_vs_retrain`` = the wall time of the job that made the model over the retrain's of
    the same seed (one unlearning request); ``compute_vs_retrain`` = the same ratio in cell
    passes with gradient through the VAE (:mod:`scunlearn.methods.compute`): no machine changes
    it; ``setup_cost_vs_retrain`` = a method's up-front job (``setup_wall_s`` in its record: sisa's
    shard training) over the same retrain.
    """
    df = df.copy()
    for col in ("floor", "floor_sd", "floor_min", "floor_max", "band_low", "band_high",
                "forget_gap_closed", "cost_vs_retrain", "setup_cost_vs_retrain"):
        df[col] = np.nan
    df["verdict"] = ""
    df["paper_verdict"] = ""
    df["controls_ok"] = False
    df["ci_overlaps_floor_range"] = False
    for _, g in df.groupby("forget_set"):
        rows = g.index
        st = floor_stats(g.loc[g["method"] == "retrain", "auc"])
        lo, hi = st["floor"] - tolerance, st["floor"] + tolerance
        for k, v in st.items():
            df.loc[rows, k] = v
        df.loc[rows, "band_low"], df.loc[rows, "band_high"] = lo, hi
        df.loc[rows, "paper_verdict"] = [paper_verdict(a, m, lo, hi) for a, m in zip(g["auc"], g["method"])]
        df.loc[rows, "ci_overlaps_floor_range"] = (
            (g["auc_ci_low"] <= st["floor_max"]) & (g["auc_ci_high"] >= st["floor_min"])).values
        ok = controls(g, alpha)["controls_ok"]
        df.loc[rows, "controls_ok"] = ok
        df.loc[rows, "verdict"] = [stat_verdict(m, t, ok) if comparable(m) else NOT_COMPARABLE
                                   for m, t in zip(g["method"], g["test_vs_retrain"])]
        # share of the baseline's excess forget-cell score that a model removed (1 = as retrain)
        b = g.loc[g["method"] == "baseline", "pc_forget_score"].mean()
        r = g.loc[g["method"] == "retrain", "pc_forget_score"].mean()
        if np.isfinite(b - r) and b - r > 1e-12:  # only meaningful when the baseline scores above retrain
            df.loc[rows, "forget_gap_closed"] = ((b - g["pc_forget_score"]) / (b - r)).values
        ret = g[g["method"] == "retrain"].set_index("seed")["wall_s"]
        ref = g["seed"].map(ret).fillna(ret.mean())
        df.loc[rows, "cost_vs_retrain"] = (g["wall_s"] / ref).values
        if "cell_passes" in g:  # the same ratio in cell passes with gradient: machine-independent
            passes = pd.to_numeric(g["cell_passes"], errors="coerce")
            ret_p = passes[g["method"] == "retrain"].groupby(g.loc[g["method"] == "retrain", "seed"]).mean()
            ref_p = g["seed"].map(ret_p).fillna(ret_p.mean())
            df.loc[rows, "compute_vs_retrain"] = (passes / ref_p).values
        if "setup_wall_s" in g:  # a method's up-front job (sisa's shards), over the same retrain
            df.loc[rows, "setup_cost_vs_retrain"] = (g["setup_wall_s"] / ref).values
    return df


def power_summary(df: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One row per forget set: the audit's power on this study (controls and the smallest detectable Δ)."""
    from scunlearn.audit.calibrated import minimal_detectable_delta

    rows = []
    for fs, g in df.groupby("forget_set", sort=False):
        c = controls(g, alpha)
        ret = g[g["method"] == "retrain"]
        se = float(ret["delta_se"].median()) if len(ret) else float("nan")
        # a retrained model's null holds its n_references other retrained models: n − 1 degrees of freedom
        df = float(ret["n_references"].median()) - 1 if len(ret) and ret["n_references"].notna().any() else np.inf
        rows.append({"forget_set": fs, **c,
                     "baseline_delta_mean": float(g.loc[g["method"] == "baseline", "delta_vs_retrain"].mean()),
                     "min_detectable_delta": minimal_detectable_delta(se, max(df, 1.0)) if np.isfinite(se)
                     else float("nan"),
                     "n_references": int(g["n_references"].max())})
    return pd.DataFrame(rows)
