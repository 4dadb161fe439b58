"""The privacy–cost frontier: every method variant's verdict against what it cost (``report/frontier.tsv``).

"Method X fails" at one budget says nothing about whether it reaches retrain-equivalence at
0.2× a retrain's cost, at 0.8×, or never. With budget ladders (``methods.NAME.budgets``) each
(variant, budget) is a variant of its own; here each gets one point per forget set: its cost
relative to retraining (wall time, and cell passes with gradient: machine-independent), its Δ
against retrain in units of the baseline's lead with its CI (from ``verdicts.tsv``), and its
verdict. Points of one ladder share a ``line``. The answer a user asks first is then the
cheapest variant certified SUCCESS at no more than a retrain's cost, beside what the fine-tuning
control reaches at that cost: a method earns a claim only where it beats fine-tuning there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: frontier.tsv's columns, in order
FRONTIER_COLUMNS = [
    "forget_set", "variant", "method", "line", "budget", "n_models", "cost_vs_retrain", "compute_vs_retrain",
    "delta_of_gap", "ci_low", "ci_high", "gap_closed", "margin_of_gap", "null_sd_of_gap", "verdict", "is_control",
]
#: the cheapest-SUCCESS table's columns
CHEAPEST_COLUMNS = [
    "forget_set", "variant", "is_control", "compute_vs_retrain", "cost_vs_retrain", "gap_closed", "verdict",
    "finetune_variant", "finetune_compute_vs_retrain", "finetune_gap_closed", "finetune_verdict", "beats_finetune",
]
#: the fine-tuning control's method: its ladder is always drawn
CONTROL = "retain_finetune"


def frontier(verdicts: pd.DataFrame, summary: pd.DataFrame, ladders: dict | None = None) -> pd.DataFrame:
    """One row per (forget set, method variant): its costs (the mean of its models' own ratios, summary.tsv),
    Δ and CI as a fraction of the baseline's lead and the verdict (verdicts.tsv). ``ladders``: variant →
    ``{"line": ..., "budget": ...}`` (the workflow's expanded variants); a variant without one is its own line."""
    ladders = ladders or {}
    v = verdicts[verdicts["method"] != "retrain"].copy()  # the equivalence control is not a method
    if "compute_vs_retrain" not in summary:
        summary = summary.assign(compute_vs_retrain=np.nan)
    costs = summary[~summary["method"].isin(["baseline", "retrain"])].groupby(["forget_set", "variant"]).agg(
        cost_vs_retrain=("cost_vs_retrain", "mean"), compute_vs_retrain=("compute_vs_retrain", "mean"))
    v = v.merge(costs.reset_index(), on=["forget_set", "variant"], how="left")
    lead = v["baseline_gap"].where(v["baseline_gap"] > 0)
    out = pd.DataFrame({
        "forget_set": v["forget_set"], "variant": v["variant"], "method": v["method"],
        "line": [ladders.get(x, {}).get("line", x) for x in v["variant"]],
        "budget": [ladders.get(x, {}).get("budget") for x in v["variant"]],
        "n_models": v["n_models"], "cost_vs_retrain": v["cost_vs_retrain"],
        "compute_vs_retrain": v["compute_vs_retrain"],
        "delta_of_gap": v["delta"] / lead, "ci_low": v["delta_ci_low"] / lead, "ci_high": v["delta_ci_high"] / lead,
        "gap_closed": v["gap_closed"], "margin_of_gap": v["margin_of_gap"],
        "null_sd_of_gap": (v["null_sd"] / lead) if "null_sd" in v else np.nan,
        "verdict": v["verdict"], "is_control": v["method"] == CONTROL,
    })
    out["budget"] = pd.to_numeric(out["budget"], errors="coerce")
    out = out.assign(_cost=cost_of(out)).sort_values(["forget_set", "line", "_cost"], kind="stable")
    return out[FRONTIER_COLUMNS].reset_index(drop=True)


def cost_of(front: pd.DataFrame) -> pd.Series:
    """The frontier's cost axis: compute relative to a retrain (cell passes with gradient, which no machine or
    neighbour changes) where counted, else wall time. Wall time on a shared machine swings with the load; the
    compute of the adversarial methods leaves out their critics' and attackers' own networks (wall shows them)."""
    return front["compute_vs_retrain"].where(front["compute_vs_retrain"].notna(), front["cost_vs_retrain"])


def cheapest(front: pd.DataFrame, max_cost: float = 1.0) -> pd.DataFrame:
    """Per forget set: the cheapest variant certified SUCCESS at no more than ``max_cost`` × a retrain's cost
    (:func:`cost_of`; the fine-tuning control included: if it is the cheapest, no method beats plain fine-tuning;
    none: the variant columns empty), and the fine-tuning control's best point at no more than that cost (the most
    gap closed, nearest 1): the claim a method earns is beating it there."""
    rows = []
    front = front.assign(_cost=cost_of(front))
    for fs, g in front.groupby("forget_set", sort=False):
        ok = g[(g["verdict"] == "SUCCESS") & (g["_cost"] <= max_cost)]
        best = ok.sort_values(["_cost", "is_control"], kind="stable").head(1)
        cap = float(best["_cost"].iloc[0]) if len(best) else max_cost
        ft = g[g["is_control"] & (g["_cost"] <= cap)]
        if len(ft):
            ft = ft.assign(_d=(1 - ft["gap_closed"]).abs()).sort_values("_d", kind="stable").head(1)
        row = {"forget_set": fs}
        for col in ("variant", "is_control", "compute_vs_retrain", "cost_vs_retrain", "gap_closed", "verdict"):
            row[col] = best[col].iloc[0] if len(best) else (None if col in ("variant", "verdict", "is_control")
                                                            else np.nan)
        for col in ("variant", "compute_vs_retrain", "gap_closed", "verdict"):
            row[f"finetune_{col}"] = ft[col].iloc[0] if len(ft) else (
                None if col in ("variant", "verdict") else np.nan)
        row["beats_finetune"] = bool(len(best)) and not bool(best["is_control"].iloc[0]) and not (
            len(ft) and ft["verdict"].iloc[0] == "SUCCESS")
        rows.append(row)
    return pd.DataFrame(rows, columns=CHEAPEST_COLUMNS)


def cheapest_sentence(row: dict, max_cost: float = 1.0) -> str:
    """One sentence per forget set: the cheapest certified variant and its cost, or none, and fine-tuning beside it."""
    fs = row["forget_set"]
    compute, wall = row.get("compute_vs_retrain"), row.get("cost_vs_retrain")
    cost = (f"{compute:.2f}× a retrain's compute" if pd.notna(compute) else f"{wall:.2f}× a retrain's wall time") + (
        f" ({wall:.2f}× its wall time here)" if pd.notna(compute) and pd.notna(wall) else "")
    if row.get("variant") and row.get("is_control"):
        return (f"{fs}: the cheapest variant certified SUCCESS is the fine-tuning control {row['variant']}, at {cost}: "
                "no method is certified at a lower cost than plain fine-tuning.")
    if row.get("variant"):
        head = f"{fs}: the cheapest variant certified SUCCESS is {row['variant']}, at {cost}."
    else:
        head = f"{fs}: no variant is certified SUCCESS at ≤ {max_cost:g}× a retrain's cost."
    if row.get("finetune_variant"):
        ft_cost = row.get("finetune_compute_vs_retrain")
        ft = (f" Fine-tuning's best at that cost: {row['finetune_variant']}"
              + (f" ({ft_cost:.2f}×)" if pd.notna(ft_cost) else "")
              + f", closing {100 * row['finetune_gap_closed']:.0f}% of the baseline's lead"
              + f" ({row['finetune_verdict']}).")
        if row.get("variant") and not row.get("beats_finetune"):
            ft += " It is certified too: the method's claim is only what fine-tuning already does."
    else:
        ft = " No fine-tuning point at that cost to compare with."
    return head + ft
