"""Retrain floor, target band and per-model verdicts (README, "What the audit does")."""

from __future__ import annotations

import numpy as np
import pandas as pd


def floor_stats(retrain_aucs) -> dict:
    """Floor = mean retrain AUC over seeds, with SD and range."""
    a = np.asarray(retrain_aucs, dtype=float)
    if a.size == 0:
        raise ValueError("no retrain models: the floor is undefined")
    return {"floor": float(a.mean()), "floor_sd": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "floor_min": float(a.min()), "floor_max": float(a.max())}


#: AUCs within this of a band edge count as in band (float noise in floor ± tolerance)
EDGE_EPS = 1e-9


def verdict(auc: float, method: str, band_low: float, band_high: float) -> str:
    """TARGET for retrain; else SUCCESS in band (edges included), OVER-UNLEARN below,
    FAIL above (LEAK for the baseline); NA for a missing AUC."""
    if method == "retrain":
        return "TARGET"
    if pd.isna(auc):
        return "NA"
    if auc > band_high + EDGE_EPS:
        return "LEAK" if method == "baseline" else "FAIL"
    if auc < band_low - EDGE_EPS:
        return "OVER-UNLEARN"
    return "SUCCESS"


def add_verdicts(df: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """Add floor, band, verdict and CI-vs-retrain-range columns, per forget set."""
    df = df.copy()
    for col in ("floor", "floor_sd", "floor_min", "floor_max", "band_low", "band_high"):
        df[col] = np.nan
    df["verdict"] = ""
    df["ci_overlaps_floor_range"] = False
    for fs, g in df.groupby("forget_set"):
        st = floor_stats(g.loc[g["method"] == "retrain", "auc"])
        lo, hi = st["floor"] - tolerance, st["floor"] + tolerance
        rows = g.index
        for k, v in st.items():
            df.loc[rows, k] = v
        df.loc[rows, "band_low"], df.loc[rows, "band_high"] = lo, hi
        df.loc[rows, "verdict"] = [verdict(a, m, lo, hi) for a, m in zip(g["auc"], g["method"])]
        df.loc[rows, "ci_overlaps_floor_range"] = (
            (g["auc_ci_low"] <= st["floor_max"]) & (g["auc_ci_high"] >= st["floor_min"])).values
    return df
