"""Power of the per-cell audit by simulation: how many reference seeds and forget cells a study needs.

Per-cell statistics are simulated as a cell's level (cells differ by hundreds of nats),
plus each model's seed noise on that cell (per-cell scale), plus — for models that
trained on a forget cell — a planted shift of ``shift`` per-cell SDs. The baseline is
the audited IN model (its detection rate is the power); a retrained model audited
leave-one-out is the negative control (its rate of significant results is the false
alarm rate).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scunlearn.audit.calibrated import per_cell_audit


def simulate_cell_stats(rng: np.random.Generator, n_pos: int = 30, n_neg: int = 150, n_retrain: int = 4,
                        n_base: int = 3, shift: float = 0.0, target_shift: float | None = None):
    """(target, retrain, baselines, pos, negatives) of a simulated study; see the module docstring."""
    n = n_pos + n_neg
    level = rng.normal(-500, 60, size=n)
    sd = rng.gamma(4.0, 0.5, size=n)
    member = np.zeros(n)
    member[:n_pos] = 1.0

    def model(in_shift):
        return level + rng.normal(0, 1, size=n) * sd + in_shift * member * sd

    retrain = {f"retrain/seed{i}": model(0.0) for i in range(n_retrain)}
    base = {f"baseline/seed{i}": model(shift) for i in range(n_base)}
    target = model(shift if target_shift is None else target_shift)
    neg = np.arange(n_pos, n)
    return target, retrain, base, np.arange(n_pos), {"matched": neg, "all": neg}


def power_table(shifts=(0.5, 1.0), n_refs=(2, 4, 8), n_forget=(15, 30, 60), reps: int = 40,
                alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Detection rate of the baseline and false-alarm rate of retrain, per shift × references × forget size.

    ``n_refs`` counts the retrained models of the forget set (train seeds + reference seeds).
    """
    rows = []
    for shift in shifts:
        for k in n_refs:
            for nf in n_forget:
                det = alarm = 0
                ses = []
                for r in range(reps):
                    rng = np.random.default_rng([seed, int(shift * 100), k, nf, r])
                    target, retrain, base, pos, negs = simulate_cell_stats(rng, n_pos=nf, n_neg=5 * nf,
                                                                           n_retrain=k, shift=shift)
                    b = per_cell_audit(target, retrain, base, pos, negs, alpha=alpha)
                    det += b["test_vs_retrain"] == "ABOVE"
                    name = next(iter(retrain))
                    o = per_cell_audit(retrain[name], retrain, base, pos, negs, self_name=name, alpha=alpha)
                    alarm += o["test_vs_retrain"] in ("ABOVE", "BELOW")
                    ses.append(o["delta_vs_retrain_se"])
                rows.append({"shift_sd": shift, "retrain_models": k, "forget_cells": nf,
                             "detection_rate": det / reps, "false_alarm_rate": alarm / reps,
                             "median_se": float(np.median(ses))})
    return pd.DataFrame(rows)
