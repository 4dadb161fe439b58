"""The judge's own controls, over every seed: baselines it catches and retrained models it spares.

A study trains ``train.seeds`` + ``audit.reference_seeds`` baseline and retrained models per
forget set. Each of them is audited here as if it were a method, against all the others
(leave-one-out: a model is never its own reference nor its own comparator), with the
same per-cell test the methods get (:func:`scunlearn.audit.calibrated.per_cell_audit`):

* positive control (detection): a baseline is caught when its test is ABOVE at ``alpha``;
* negative control (false alarms): a retrained model is flagged when its test rejects
  (ABOVE or BELOW) at ``alpha / n_retrain`` (Bonferroni over the retrained models, so that a
  calibrated test fails this control in at most a fraction ``alpha`` of studies).

``controls_ok`` = every baseline caught and no retrained model flagged. The same trials,
with references subsampled to a study's count, are the calibration bench's
(``bench/audit_calibration.py``): false-alarm and detection rates on real trained models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special

from scunlearn.audit.calibrated import per_cell_audit


def control_trials(retrain: dict[str, np.ndarray], baselines: dict[str, np.ndarray], pos: np.ndarray,
                   negatives: dict[str, np.ndarray], *, strata: np.ndarray | None = None, n_models: int | None = None,
                   draws: int = 1, seed: int = 0, test: str = "spread", measure: str = "shift",
                   against: str = "matched", type_level: bool = False, alpha: float = 0.05, margin: float = 0.1,
                   n0: float = 4.0) -> pd.DataFrame:
    """Audit every retrained and baseline model against the others; one row per (draw, model).

    ``n_models``: how many retrained and how many baseline models a study has (None: all
    given, one draw). With fewer than given, each draw picks that many of each at random,
    as a study of that size would have, and audits each picked model against the rest.
    Columns: draw, kind (``retrain`` or ``baseline``), model, pc_auc,
    pc_shift, delta (in the measure's units), p, outcome (the test's ABOVE / BELOW /
    EQUIVALENT / UNDECIDED).
    """
    r_names, b_names = sorted(retrain), sorted(baselines)
    k = len(r_names) if n_models is None else min(n_models, len(r_names), len(b_names))
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(draws if k < len(r_names) or k < len(b_names) else 1):
        rs = r_names if k == len(r_names) else sorted(rng.choice(r_names, k, replace=False))
        bs = b_names if n_models is None or k == len(b_names) else sorted(rng.choice(b_names, k, replace=False))
        ret, base = {r: retrain[r] for r in rs}, {b: baselines[b] for b in bs}
        for kind, group in (("retrain", ret), ("baseline", base)):
            for name, target in group.items():
                res = per_cell_audit(target, ret, base, pos, negatives, self_name=name, margin=margin,
                                     alpha=alpha, n0=n0, strata=strata, test=test, measure=measure,
                                     against=against, type_level=type_level)
                rows.append({"draw": d, "kind": kind, "model": name, "n_retrain": len(ret),
                             "pc_auc": res["pc_auc"], "pc_shift": res["pc_shift"], "delta": res["delta_vs_retrain"],
                             "p": res["delta_vs_retrain_p"], "outcome": res["test_vs_retrain"]})
    return pd.DataFrame(rows)


def count_controls(trials: pd.DataFrame, alpha: float = 0.05) -> dict:
    """Control counts of one study's :func:`control_trials` (all models, one draw) and the stated rule.

    Detection: baselines with outcome ABOVE (p < alpha). False alarms: retrained models that
    rejected at ``alpha / n_retrain`` (Bonferroni); also counted at plain ``alpha`` with their
    expected number under a calibrated test (``n_retrain · alpha``), for information.
    """
    null, leak = trials[trials["kind"] == "retrain"], trials[trials["kind"] == "baseline"]
    n_ret = len(null)
    rejected = null["outcome"].isin(["ABOVE", "BELOW"])
    alarms = int((rejected & (null["p"] < alpha / max(n_ret, 1))).sum())
    caught = int((leak["outcome"] == "ABOVE").sum())
    return {
        "baseline_caught": caught, "n_baseline": len(leak),
        "retrain_false_alarms": alarms, "n_retrain": n_ret,
        "retrain_rejected_at_alpha": int(rejected.sum()), "expected_at_alpha": n_ret * alpha,
        "expected_false_alarms": alpha,  # at most, over the whole family (Bonferroni)
        "controls_ok": bool(len(leak) and caught == len(leak) and n_ret and alarms == 0),
    }


def rate_ci(k: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson interval of a binomial rate ``k / n`` (``k`` may be fractional: a mean over draws × n)."""
    if n <= 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo = 0.0 if k <= 0 else float(special.betaincinv(k, n - k + 1, a))
    hi = 1.0 if k >= n else float(special.betaincinv(k + 1, n - k, 1 - a))
    return lo, hi


def calibration_rates(trials: pd.DataFrame, alpha: float = 0.05) -> dict:
    """False-alarm rate (retrained models rejected at ``alpha``) and detection rate (baselines ABOVE at
    ``alpha``), each with a Clopper–Pearson CI over the distinct models (draws share models, so the
    number of models, not of trials, is the sample size)."""
    out = {}
    for kind, hit, name in (("retrain", ("ABOVE", "BELOW"), "false_alarm"), ("baseline", ("ABOVE",), "detection")):
        g = trials[trials["kind"] == kind]
        rate = float(g["outcome"].isin(hit).mean()) if len(g) else float("nan")
        n = int(g["model"].nunique())
        lo, hi = rate_ci(rate * n, n)
        out.update({f"{name}_rate": rate, f"{name}_ci_low": lo, f"{name}_ci_high": hi, f"{name}_models": n,
                    f"{name}_trials": len(g)})
    return out
