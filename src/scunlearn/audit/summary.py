"""``report/summary.tsv``: its columns, defined once (the README's contract table lists them), and the
rows built from the audit records with their verdicts (:func:`aggregate`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scunlearn import ScunlearnError

#: the public columns of report/summary.tsv, in order (the README's contract table lists them)
SUMMARY_COLUMNS = [
    "run", "dataset", "forget_set", "method", "variant", "param_hash", "seed",
    # primary: per-cell reference-calibrated attack, forget cells vs matched negatives
    "pc_auc", "pc_auc_ci_low", "pc_auc_ci_high", "pc_auc_cell_type", "pc_auc_all", "pc_lr_auc",
    "pc_tpr_at_1pct_fpr", "pc_tpr_at_0.1pct_fpr", "pc_forget_score", "forget_gap_closed",
    "delta_vs_retrain", "delta_ci_low", "delta_ci_high", "delta_se", "p_vs_retrain", "tost_p_vs_retrain",
    "test_vs_retrain", "n_references", "verdict", "controls_ok",
    # the judge's controls over every seed of this forget set (scunlearn.audit.controls)
    "controls_baseline_caught", "controls_n_baseline", "controls_false_alarms", "controls_n_retrain",
    "delta_vs_finetune", "dft_ci_low", "dft_ci_high", "p_vs_finetune",
    # the paper's MLP attack (unbiased), the LOSS attack and the paper's band rule
    "auc", "auc_sd", "auc_ci_low", "auc_ci_high", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "loss_attack_auc",
    "floor", "floor_sd", "floor_min", "floor_max", "band_low", "band_high", "paper_verdict",
    "ci_overlaps_floor_range", "n_forget", "n_negatives",
    # utility and cost
    "recon_mse", "marker_mse", "val_elbo", "latent_acc", "wall_s", "max_rss_mb", "cost_vs_retrain",
    "compute_vs_retrain",
    # the private-training anchor (dp_retrain): the accountant's ε at δ; NaN for every other model
    "dp_epsilon", "dp_delta",
    # up-front cost of a method that trains before any request (sisa's shards), NaN for the others
    "setup_cost_vs_retrain",
]

#: audit-record keys renamed to their summary column
RENAME = {"delta_vs_retrain_ci_low": "delta_ci_low", "delta_vs_retrain_ci_high": "delta_ci_high",
           "delta_vs_retrain_se": "delta_se", "delta_vs_retrain_p": "p_vs_retrain",
           "delta_vs_retrain_tost_p": "tost_p_vs_retrain", "delta_vs_finetune_ci_low": "dft_ci_low",
           "delta_vs_finetune_ci_high": "dft_ci_high", "delta_vs_finetune_p": "p_vs_finetune"}

#: verdicts a summary row can carry (see :mod:`scunlearn.audit.verdict`)
VERDICTS = ("LEAK", "TARGET", "SUCCESS", "FAIL", "OVER-UNLEARN", "INCONCLUSIVE", "NOT-COMPARABLE")


def aggregate(records: list[dict], tolerance: float, alpha: float = 0.05,
              controls: list[dict] | None = None, margin=None) -> pd.DataFrame:
    """One tidy row per audited model with verdicts, controls, floor and band (the summary.tsv contract).

    ``controls``: the controls stage's records, one per forget set (counts over every seed);
    without them the controls are counted over the audited rows' seeds. ``margin``: the config's
    ``audit.equivalence_margin``; a fraction of the baseline's lead (``{of_baseline_gap: f}``) is
    resolved here per forget set and each model's TOST redone with it (the records cannot: each
    audit job sees one model).
    """
    from scunlearn.audit.attacks import ATTACKS
    from scunlearn.audit.verdict import add_verdicts

    df = pd.DataFrame(records).rename(columns=RENAME)
    if margin is not None:
        _retest(df, records, margin, alpha)
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


def _retest(df: pd.DataFrame, records: list[dict], spec, alpha: float) -> None:
    """Each model's TOST p and outcome against retrain at its forget set's margin, where that is a fraction of the
    baseline's lead (in place; an absolute margin was the records' own)."""
    import dataclasses

    from scunlearn.audit.calibrated import _t_comparison, outcome
    from scunlearn.audit.variants import spec_for, study_margins

    margins = study_margins(records, spec)
    for i, row in df.iterrows():
        if not isinstance(spec_for(spec, row["forget_set"]), dict):
            continue
        delta, se, dof = row.get("delta_vs_retrain"), row.get("delta_se"), row.get("delta_vs_retrain_df")
        if not all(isinstance(x, (int, float)) and np.isfinite(x) for x in (delta, se, dof)):
            continue
        c = _t_comparison(float(delta), float(se), float(dof), margins[row["forget_set"]][0], 0.95, 1)
        df.loc[i, "tost_p_vs_retrain"] = c.tost_p
        df.loc[i, "test_vs_retrain"] = outcome(dataclasses.replace(c, p=float(row["p_vs_retrain"])), alpha)
