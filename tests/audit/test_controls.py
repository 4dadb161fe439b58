"""The judge's own controls: the spread test, counts over every seed, the leave-one-out null, a type-level shift."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from scunlearn.audit.calibrated import calibrated_scores, compare_spread, per_cell_audit, structural
from scunlearn.audit.controls import calibration_rates, control_trials, count_controls, rate_ci
from scunlearn.audit.power import simulate_cell_stats
from scunlearn.audit.verdict import add_verdicts, power_summary


def test_spread_test_is_the_t_prediction_interval_of_the_null_aucs():
    """Δ against the group's mean, SE = SD(null) · (n − 1)/n · √(1 + 1/m) (the leave-one-out values' spread
    corrected), Student t with n − 1 df, as scipy computes it."""
    null = np.array([0.46, 0.52, 0.49, 0.55, 0.43, 0.50, 0.47])
    c = compare_spread(0.62, null, null, margin=0.1)
    n = len(null)
    se = null.std(ddof=1) * (n - 1) / n * np.sqrt(1 + 1 / n)
    t = (0.62 - null.mean()) / se
    assert c.delta == pytest.approx(0.62 - null.mean())
    assert c.se == pytest.approx(se) and c.df == n - 1
    assert c.p == pytest.approx(2 * stats.t.sf(abs(t), n - 1))
    q = stats.t.ppf(0.975, n - 1)
    assert (c.ci_low, c.ci_high) == pytest.approx((c.delta - q * se, c.delta + q * se))
    tost = max(stats.t.sf((c.delta + 0.1) / se, n - 1), stats.t.sf((0.1 - c.delta) / se, n - 1))
    assert c.tost_p == pytest.approx(tost)
    # against a control group of 2 models: its own mean, the null's spread, 1 + 1/2
    g = compare_spread(0.62, np.array([0.60, 0.64]), null, margin=0.1)
    assert g.delta == pytest.approx(0.0) and g.se == pytest.approx(null.std(ddof=1) * (n - 1) / n * np.sqrt(1.5))
    assert np.isnan(compare_spread(0.6, null[:1], null[:1], 0.1).p)  # one null value: no spread, no test


def test_audit_writes_the_retrained_models_leave_one_out_values_as_its_null():
    """pc_null[i] is retrained model i scored against the *other* retrained models (never itself): its
    score shift (forget cells' mean minus the negatives'); pc_retrain_aucs the same models' AUCs."""
    target, retrain, base, pos, negs = simulate_cell_stats(np.random.default_rng(3), n_retrain=5, shift=0.5)
    negs["all"] = np.r_[negs["matched"], np.arange(len(target), len(target))]  # every non-member
    res = per_cell_audit(target, retrain, base, pos, negs)
    names = list(retrain)
    shifts, aucs = [], []
    for r in names:
        z = calibrated_scores(retrain[r], np.array([retrain[o] for o in names if o != r]))["z"]
        shifts.append(z[pos].mean() - z[negs["all"]].mean())
        aucs.append(structural(z, pos, negs["matched"])[0])
    assert res["pc_null"] == pytest.approx(shifts) and res["pc_retrain_shifts"] == pytest.approx(shifts)
    assert res["pc_retrain_aucs"] == pytest.approx(aucs)
    assert (res["pc_test"], res["pc_measure"], res["pc_negatives"]) == ("spread", "shift", "all")
    z = calibrated_scores(target, np.array([retrain[o] for o in names]))["z"]
    assert res["pc_shift"] == pytest.approx(z[pos].mean() - z[negs["all"]].mean())
    assert res["delta_vs_retrain"] == pytest.approx(res["pc_shift"] - np.mean(shifts))
    # the AUC as the measure: the null is the leave-one-out AUCs
    auc = per_cell_audit(target, retrain, base, pos, negs, measure="auc", against="matched")
    assert auc["pc_null"] == pytest.approx(aucs)
    assert auc["delta_vs_retrain"] == pytest.approx(auc["pc_auc"] - np.mean(aucs))
    with pytest.raises(ValueError, match="delong test compares AUCs"):
        per_cell_audit(target, retrain, base, pos, negs, test="delong", measure="shift")
    # a retrained model audited as itself is left out of its own null
    own = per_cell_audit(retrain[names[0]], retrain, base, pos, negs, self_name=names[0])
    assert len(own["pc_retrain_aucs"]) == len(names) - 1


def test_controls_count_every_seed_with_the_stated_rule():
    """All baselines and retrained models are audited; false alarms at α / n_retrain; ok = all caught, none flagged."""
    target, retrain, base, pos, negs = simulate_cell_stats(np.random.default_rng(5), n_retrain=8, n_base=8,
                                                           shift=1.5)
    trials = control_trials(retrain, base, pos, negs)
    assert sorted(trials.loc[trials["kind"] == "retrain", "model"]) == sorted(retrain)
    assert sorted(trials.loc[trials["kind"] == "baseline", "model"]) == sorted(base)
    c = count_controls(trials)
    assert (c["n_baseline"], c["n_retrain"]) == (8, 8)
    assert c["baseline_caught"] == int((trials.query("kind == 'baseline'")["outcome"] == "ABOVE").sum())
    assert c["expected_at_alpha"] == pytest.approx(0.4)
    # the rule on a constructed table: one retrained model at p = 0.01 is rejected at α but not at α / 8
    t = pd.DataFrame({"kind": ["baseline"] * 2 + ["retrain"] * 8, "model": list("abcdefghij"),
                      "outcome": ["ABOVE", "ABOVE", "BELOW"] + ["UNDECIDED"] * 7,
                      "p": [0.001, 0.002, 0.01] + [0.5] * 7})
    c = count_controls(t)
    assert (c["retrain_false_alarms"], c["retrain_rejected_at_alpha"], c["controls_ok"]) == (0, 1, True)
    t.loc[2, "p"] = 0.001
    assert count_controls(t)["retrain_false_alarms"] == 1 and not count_controls(t)["controls_ok"]
    t.loc[2, "p"], t.loc[1, "outcome"] = 0.5, "UNDECIDED"
    assert count_controls(t)["baseline_caught"] == 1 and not count_controls(t)["controls_ok"]


def test_verdicts_take_the_controls_over_every_seed_not_only_the_audited_seeds():
    """The audited rows (2 seeds) all pass, but a reference seed's baseline was missed: controls fail."""
    rows = [{"forget_set": "s", "method": m, "variant": m, "seed": s, "test_vs_retrain": t, "p_vs_retrain": p,
             "pc_forget_score": f, "auc": 0.5, "auc_ci_low": 0.4, "auc_ci_high": 0.6, "wall_s": 1.0,
             "delta_vs_retrain": 0.0, "delta_se": 0.05, "n_references": 7}
            for m, s, t, p, f in [("baseline", 0, "ABOVE", 0.001, 2.0), ("baseline", 1, "ABOVE", 0.001, 2.0),
                                  ("retrain", 0, "UNDECIDED", 0.5, 0.0), ("retrain", 1, "UNDECIDED", 0.6, 0.0),
                                  ("m", 0, "EQUIVALENT", 0.9, 0.1)]]
    df = pd.DataFrame(rows)
    assert add_verdicts(df, 0.03)["controls_ok"].all()  # counted over the rows alone
    df["controls_baseline_caught"], df["controls_n_baseline"] = 7, 8
    df["controls_false_alarms"], df["controls_n_retrain"] = 0, 8
    out = add_verdicts(df, 0.03)
    assert not out["controls_ok"].any() and out.loc[out["method"] == "m", "verdict"].item() == "INCONCLUSIVE"
    p = power_summary(out).iloc[0]
    assert (p["baseline_caught"], p["n_baseline"], p["n_retrain"]) == (7, 8, 8)


def _type_shift_study(rng, n_models=8, tau=2.0, tail_df=None):
    """Null models (no member ever trained on): each shifts every cell of the forget cells' type by its
    own draw of τ per-cell SDs (normal, or Student t with ``tail_df`` for heavy tails), so the 30
    forget cells move together against the other-type negatives."""
    n_pos, n_type_neg, n_other = 30, 15, 135
    n = n_pos + n_type_neg + n_other
    level = rng.normal(-500, 60, size=n)
    sd = rng.gamma(4.0, 0.5, size=n)
    in_type = np.r_[np.ones(n_pos + n_type_neg), np.zeros(n_other)]

    def model():
        shift = rng.normal() if tail_df is None else rng.standard_t(tail_df)
        return level + sd * rng.normal(size=n) + tau * shift * sd * in_type

    retrain = {f"retrain/seed{i}": model() for i in range(n_models)}
    base = {f"baseline/seed{i}": model() for i in range(n_models)}
    negs = {"matched": np.arange(n_pos, n), "all": np.arange(n_pos, n)}
    return retrain, base, np.arange(n_pos), negs


@pytest.mark.parametrize("tau,tail_df", [(0.0, None), (0.5, None), (2.0, None), (1.0, 2)])
def test_spread_test_keeps_its_false_alarm_rate_under_a_shared_type_level_shift(tau, tail_df):
    """200 null studies of 8 retrained models, each retrained model shifting the forget cells' whole type
    by its own amount (heavy-tailed in the last case): the spread test rejects one at ≲ α."""
    rejected, n = 0, 200
    for s in range(n):
        retrain, base, pos, negs = _type_shift_study(np.random.default_rng([11, s]), tau=tau, tail_df=tail_df)
        name = next(iter(retrain))
        r = per_cell_audit(retrain[name], retrain, base, pos, negs, self_name=name, test="spread")
        rejected += r["test_vs_retrain"] in ("ABOVE", "BELOW")
    assert rejected / n <= 0.09  # α = 0.05 with the binomial noise of 200 studies


def test_calibration_rates_and_clopper_pearson_interval():
    lo, hi = rate_ci(0, 24)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 24))
    lo, hi = rate_ci(3, 10)
    assert (lo, hi) == pytest.approx((stats.beta.ppf(0.025, 3, 8), stats.beta.ppf(0.975, 4, 7)))
    target, retrain, base, pos, negs = simulate_cell_stats(np.random.default_rng(9), n_retrain=10, n_base=10,
                                                           shift=2.0)
    trials = control_trials(retrain, base, pos, negs, n_models=6, draws=4, seed=1)
    assert len(trials) == 4 * 12 and trials["n_retrain"].eq(6).all()
    r = calibration_rates(trials)
    assert r["false_alarm_models"] <= 10 and r["false_alarm_trials"] == 24
    assert r["detection_rate"] >= 0.8 and r["detection_ci_low"] <= r["detection_rate"] <= r["detection_ci_high"]
