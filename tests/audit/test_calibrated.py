"""The per-cell calibrated audit: calibration, null behaviour, planted shifts, paired tests, TOST, verdicts."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from scunlearn.audit.calibrated import (
    calibrated_scores,
    compare,
    minimal_detectable_delta,
    outcome,
    per_cell_audit,
    structural,
    verdict,
)
from scunlearn.audit.power import power_table, simulate_cell_stats
from scunlearn.audit.verdict import add_verdicts, paper_verdict, power_summary


def _study(rng, n_pos=30, n_neg=150, n_retrain=4, n_base=3, shift=0.0, target_shift=None):
    return simulate_cell_stats(rng, n_pos, n_neg, n_retrain, n_base, shift, target_shift)


def test_calibration_is_the_per_cell_z_score_with_many_references():
    rng = np.random.default_rng(0)
    refs = rng.normal(size=(400, 50)) * np.linspace(1, 5, 50) + np.arange(50)
    target = np.arange(50) + 2 * np.linspace(1, 5, 50)  # two per-cell SDs above the mean
    z = calibrated_scores(target, refs)["z"]
    assert z == pytest.approx(np.full(50, 2.0), abs=0.25)
    # one reference: the difference, unscaled
    assert calibrated_scores(np.array([3.0, 1.0]), np.array([[1.0, 1.0]]))["z"] == pytest.approx([2.0, 0.0])


def test_the_pooled_variance_is_the_mean_of_the_per_cell_variances():
    """The shrinkage target is the mean per-cell variance (a median pool was measured and costs power: the
    docstring of calibrated_scores): with 2 references of per-cell variances 1 and 9, n0 = 4."""
    refs = np.array([[0.0, 0.0], [np.sqrt(2.0), np.sqrt(18.0)]])  # per-cell variances (ddof 1): 1 and 9
    z = calibrated_scores(refs.mean(0) + 1.0, refs, n0=4.0)["z"]
    pool = 5.0
    assert z == pytest.approx(1 / np.sqrt((np.array([1.0, 9.0]) + 4 * pool) / 5))


def test_likelihood_ratio_uses_the_in_shift_and_ranks_like_z_for_equal_variances():
    rng = np.random.default_rng(1)
    out = rng.normal(size=(3, 20))
    target = rng.normal(size=20)
    sc = calibrated_scores(target, out, in_refs=out + 1.0)  # IN references sit 1 above OUT
    assert np.argsort(sc["lr"]).tolist() != [] and np.isfinite(sc["lr"]).all()
    assert calibrated_scores(target, out)["lr"].tolist() == pytest.approx([np.nan] * 20, nan_ok=True)


def test_null_ci_covers_half_at_its_nominal_rate_and_never_leaks_beyond_it():
    """Members drawn from the non-member distribution: the AUC CI covers 0.5 ~95%, LEAK ≲ α."""
    covered, leaks, n = 0, 0, 200
    for s in range(n):
        rng = np.random.default_rng(100 + s)
        target, retrain, base, pos, negs = _study(rng, shift=0.0)
        r = per_cell_audit(target, retrain, base, pos, negs)
        covered += r["pc_auc_ci_low"] <= 0.5 <= r["pc_auc_ci_high"]
        leaks += verdict("baseline", r["test_vs_retrain"]) == "LEAK"
    assert 0.90 <= covered / n <= 0.99
    assert leaks / n <= 0.08  # α = 0.05, with the binomial noise of 200 draws


def test_planted_per_cell_shift_is_detected_and_retrain_left_one_out_is_not():
    rng = np.random.default_rng(7)
    # 8 retrained models as in the demo: the spread test's null has 8 values (df 7)
    target, retrain, base, pos, negs = _study(rng, shift=1.0, n_retrain=8)
    r = per_cell_audit(target, retrain, base, pos, negs)
    assert r["pc_auc"] > 0.65 and r["pc_auc_ci_low"] > 0.5
    assert r["test_vs_retrain"] == "ABOVE" and verdict("baseline", r["test_vs_retrain"]) == "LEAK"
    assert np.isfinite(r["pc_lr_auc"]) and r["pc_lr_auc"] > 0.65
    # TPR at 1% FPR (1.5 of 150 negatives) is noisy on one draw: above chance (0.01) over ten
    tprs = [per_cell_audit(*_study(np.random.default_rng(s), shift=1.0, n_retrain=8))["pc_tpr_at_1pct_fpr"]
            for s in range(10)]
    assert np.mean(tprs) > 0.03
    # a retrained model audited leave-one-out against the other retrained models
    name = "retrain/seed0"
    r0 = per_cell_audit(retrain[name], retrain, base, pos, negs, self_name=name)
    assert r0["n_references"] == 7 and r0["test_vs_retrain"] in ("EQUIVALENT", "UNDECIDED")
    assert r0["pc_auc_ci_low"] < 0.5 < r0["pc_auc_ci_high"]


def test_an_unlearned_model_is_never_compared_with_its_own_seeds_retrained_model():
    """exclude= leaves the own seed's retrained model out of the references and the null: the record does not
    change whatever that model's statistics are, and it has one reference less."""
    rng = np.random.default_rng(9)
    target, retrain, base, pos, negs = _study(rng, shift=0.3, n_retrain=6)
    name = "retrain/seed2"
    r = per_cell_audit(target, retrain, base, pos, negs, exclude=(name,))
    assert r["n_references"] == 5 and per_cell_audit(target, retrain, base, pos, negs)["n_references"] == 6
    twin = dict(retrain)
    twin[name] = target + rng.normal(scale=1e-3, size=len(target))  # a correlated twin of the audited model
    r_twin = per_cell_audit(target, twin, base, pos, negs, exclude=(name,))
    for k in ("pc_shift", "delta_vs_retrain", "delta_vs_retrain_p", "pc_auc"):
        assert r_twin[k] == pytest.approx(r[k]), k
    assert len(r["pc_null"]) == 5
    # without the exclusion the twin is a reference (and a comparator) and moves the record
    with_twin = per_cell_audit(target, twin, base, pos, negs)
    assert with_twin["n_references"] == 6 and abs(with_twin["pc_shift"] - r["pc_shift"]) > 0.01


def test_fine_tuning_control_comparison():
    rng = np.random.default_rng(8)
    target, retrain, base, pos, negs = _study(rng, n_retrain=8, shift=1.0, target_shift=0.0)  # a perfect unlearner
    ctrl = {"ft/seed0": base["baseline/seed0"], "ft/seed1": base["baseline/seed1"]}  # a control that did nothing
    r = per_cell_audit(target, retrain, base, pos, negs, controls=ctrl)
    assert r["delta_vs_finetune"] < -0.15 and r["delta_vs_finetune_ci_high"] < 0
    assert r["delta_vs_finetune_n"] == 2


def _fixed(auc, n=40):
    """Structural components of an AUC with no cell noise (every component equal)."""
    return auc, np.full(n, auc), np.full(n, auc)


def test_tost_matches_the_textbook_two_one_sided_t_tests():
    # Δ = 0.3, SE = 0.1 (seed part only, df = 20), margin 0.5:
    # t_low = (0.3 + 0.5) / 0.1 = 8, t_high = (0.5 - 0.3) / 0.1 = 2; p_TOST = max of the one-sided p's
    n = 21
    seed_var = 0.1**2 / (1 + 1 / n)
    group = [_fixed(0.0)] * n
    c = compare(_fixed(0.3), group, margin=0.5, seed_var=seed_var, seed_df=20)
    assert c.se == pytest.approx(0.1) and c.df == pytest.approx(20)
    assert c.tost_p == pytest.approx(stats.t.sf(2.0, 20)) and c.tost_p == pytest.approx(0.02963, abs=1e-4)
    assert c.p == pytest.approx(2 * stats.t.sf(3.0, 20))
    assert outcome(c, 0.05) == "ABOVE"  # significant difference and equivalent: the difference wins
    c2 = compare(_fixed(0.1), group, margin=0.5, seed_var=seed_var, seed_df=20)
    assert outcome(c2, 0.05) == "EQUIVALENT"
    # the 90% CI lies within ±margin exactly when TOST rejects at 5%
    lo, hi = c2.delta - stats.t.ppf(0.95, c2.df) * c2.se, c2.delta + stats.t.ppf(0.95, c2.df) * c2.se
    assert (-0.5 < lo and hi < 0.5) == (c2.tost_p < 0.05)


def test_paired_delong_variance_and_seed_excess():
    """Paired Δ variance equals the DeLong formula; seed spread beyond cell noise widens it."""
    rng = np.random.default_rng(0)
    pos, neg = np.arange(30), np.arange(30, 180)
    scores = rng.normal(size=(5, 180))
    m, group = structural(scores[0], pos, neg), [structural(s, pos, neg) for s in scores[1:]]
    d10 = m[1] - np.mean([g[1] for g in group], 0)
    d01 = m[2] - np.mean([g[2] for g in group], 0)
    c = compare(m, group, margin=0.05, seed_var=0.0, seed_df=3)
    assert c.se**2 == pytest.approx(d10.var(ddof=1) / 30 + d01.var(ddof=1) / 150) and c.df == np.inf
    spread = [(0.5 + d, *g[1:]) for d, g in zip([-0.15, 0.15, -0.1, 0.1], group)]  # AUCs far apart
    wide = compare(m, spread, margin=0.05)
    assert wide.se > c.se and np.isfinite(wide.df) and wide.df >= 3
    assert minimal_detectable_delta(0.05) == pytest.approx((1.959964 + 0.841621) * 0.05, rel=1e-4)


def test_verdict_rules():
    assert verdict("baseline", "BELOW") == "INCONCLUSIVE"  # a baseline is never OVER-UNLEARN
    assert verdict("baseline", "EQUIVALENT") == "INCONCLUSIVE"  # nor SUCCESS: the control was missed
    assert verdict("retrain", "ABOVE") == "TARGET"
    assert [verdict("m", o) for o in ("ABOVE", "BELOW", "EQUIVALENT", "UNDECIDED")] == [
        "FAIL", "OVER-UNLEARN", "SUCCESS", "INCONCLUSIVE"]
    assert verdict("m", "EQUIVALENT", controls_ok=False) == "INCONCLUSIVE"
    assert paper_verdict(0.2, "baseline", 0.4, 0.6) == "NO-LEAK"
    assert paper_verdict(0.7, "baseline", 0.4, 0.6) == "LEAK"
    assert paper_verdict(0.6, "m", 0.4, 0.6) == "SUCCESS" and paper_verdict(0.3, "m", 0.4, 0.6) == "OVER-UNLEARN"


def test_add_verdicts_gates_success_on_the_study_controls():
    def frame(baseline_tests):
        rows = [("baseline", 0, t, 2.0) for t in baseline_tests]
        rows += [("retrain", 0, "UNDECIDED", 0.0), ("retrain", 1, "EQUIVALENT", 0.0), ("m", 0, "EQUIVALENT", 0.5)]
        return pd.DataFrame([{"forget_set": "s", "method": m, "variant": m, "seed": s, "test_vs_retrain": t,
                              "pc_forget_score": f, "auc": 0.5, "auc_ci_low": 0.4, "auc_ci_high": 0.6,
                              "wall_s": 10.0, "delta_vs_retrain": 0.0, "delta_se": 0.05, "n_references": 3}
                             for m, s, t, f in rows])

    good = add_verdicts(frame(["ABOVE", "ABOVE"]), 0.03)
    assert good.loc[good["method"] == "m", "verdict"].item() == "SUCCESS"
    assert good.loc[good["method"] == "m", "forget_gap_closed"].item() == pytest.approx(0.75)
    missed = add_verdicts(frame(["ABOVE", "UNDECIDED"]), 0.03)
    assert missed.loc[missed["method"] == "m", "verdict"].item() == "INCONCLUSIVE"
    assert list(missed.loc[missed["method"] == "baseline", "verdict"]) == ["LEAK", "INCONCLUSIVE"]
    p = power_summary(missed).iloc[0]
    assert (p["baseline_caught"], p["n_baseline"], p["retrain_false_alarms"]) == (1, 2, 0)
    assert p["min_detectable_delta"] == pytest.approx(minimal_detectable_delta(0.05, df=2))  # 3 references


def test_power_table_grows_with_references_and_shift():
    t = power_table(shifts=(1.0,), n_refs=(2, 8), n_forget=(30,), reps=12)
    assert list(t["retrain_models"]) == [2, 8]
    assert t["detection_rate"].iloc[1] >= t["detection_rate"].iloc[0]
    assert t["detection_rate"].iloc[1] >= 0.5 and (t["false_alarm_rate"] <= 0.25).all()


def test_readme_contract_table_lists_exactly_the_summary_columns(root):
    import re

    from scunlearn.audit.summary import SUMMARY_COLUMNS

    text = (root / "README.md").read_text()
    table = text.split("<!-- summary-contract:start -->")[1].split("<!-- summary-contract:end -->")[0]
    listed = [c for row in table.splitlines()[2:] for c in re.findall(r"`([^`]+)`", row.split("|")[1])]
    assert listed == SUMMARY_COLUMNS


def test_population_centring_removes_a_seed_shift_shared_by_a_cell_type():
    """Null models that fit one whole type better than their references: AUC 0.5 only after centring."""
    strata = np.where(np.arange(180) < 90, "rare", "common")  # the forget cells (0-29) are all 'rare' ...
    negs = {"matched": np.r_[np.arange(30, 60), np.arange(90, 120)], "all": np.arange(30, 180)}  # ... negatives mixed
    raw, centred = [], []
    for seed in range(20):
        target, retrain, base, pos, _ = _study(np.random.default_rng(seed), n_retrain=6)
        sd = np.std([retrain[k] for k in retrain], axis=0)
        shifted = target + 3 * sd * (strata == "rare")  # this seed fits the rare type better
        raw.append(per_cell_audit(shifted, retrain, base, pos, negs)["pc_auc"])
        centred.append(per_cell_audit(shifted, retrain, base, pos, negs, strata=strata)["pc_auc"])
    assert np.mean(raw) > 0.65
    assert abs(np.mean(centred) - 0.5) < 0.04


def test_a_type_too_small_to_centre_on_its_own_is_recorded_not_silent():
    """Forget cells of a type with fewer than 50 unseen cells are centred on all audit cells, and the record says so
    (with the count); types with enough cells, and a forgotten type itself (type level), are not listed."""
    target, retrain, base, pos, _ = _study(np.random.default_rng(1), n_retrain=6)
    strata = np.where(np.arange(180) < 15, "small", np.where(np.arange(180) < 30, "big", "big"))
    strata[30:40] = "small"  # 10 unseen cells of the small type among the audit cells
    negs = {"matched": np.arange(30, 90), "all": np.arange(30, 180)}
    r = per_cell_audit(target, retrain, base, pos, negs, strata=strata)
    assert r["pc_centred_on_all"] == {"small": 10}
    assert per_cell_audit(target, retrain, base, pos, negs, strata=strata, type_level=True)["pc_centred_on_all"] == {}
    assert per_cell_audit(target, retrain, base, pos, negs)["pc_centred_on_all"] == {}


def test_methods_of_another_model_class_get_no_verdict():
    """sisa's ensemble and dp_retrain's DP VAE are not comparable with retrained single VAEs."""
    from scunlearn.audit.verdict import NOT_COMPARABLE, add_verdicts, comparable

    assert not comparable("sisa") and not comparable("dp_retrain")
    assert comparable("fisher") and comparable("baseline") and comparable("a_users_method")
    rows = []
    for method, test in [("baseline", "ABOVE"), ("retrain", "UNDECIDED"), ("sisa", "ABOVE"), ("fisher", "ABOVE")]:
        rows.append({"forget_set": "f", "method": method, "variant": method, "seed": 0, "auc": 0.6,
                     "auc_ci_low": 0.5, "auc_ci_high": 0.7, "test_vs_retrain": test, "pc_forget_score": 1.0,
                     "wall_s": 10.0, "delta_vs_retrain": 0.3, "p_vs_retrain": 0.01})
    out = add_verdicts(pd.DataFrame(rows), 0.03).set_index("method")
    assert out.loc["sisa", "verdict"] == NOT_COMPARABLE
    assert out.loc["sisa", "delta_vs_retrain"] == 0.3  # the numbers stay
    assert out.loc["fisher", "verdict"] == "FAIL" and out.loc["baseline", "verdict"] == "LEAK"


def test_negative_control_tests_each_retrained_seed_at_alpha_over_their_number():
    """A retrained seed is a false alarm only below α / n_retrain (Bonferroni over the seeds):
    p = 0.045 with two seeds is not one (it would be at α), p = 0.02 is."""
    def frame(p_retrain):
        rows = [("baseline", 0, "ABOVE", 0.001), ("baseline", 1, "ABOVE", 0.002),
                ("retrain", 0, "UNDECIDED", 0.6),
                ("retrain", 1, "BELOW" if p_retrain < 0.05 else "UNDECIDED", p_retrain),
                ("m", 0, "EQUIVALENT", 0.9)]
        return pd.DataFrame([{"forget_set": "s", "method": m, "variant": m, "seed": s, "test_vs_retrain": t,
                              "p_vs_retrain": p, "pc_forget_score": 1.0, "auc": 0.5, "auc_ci_low": 0.4,
                              "auc_ci_high": 0.6, "wall_s": 10.0, "delta_vs_retrain": 0.0, "delta_se": 0.05,
                              "n_references": 3} for m, s, t, p in rows])

    spared = add_verdicts(frame(0.045), 0.03, alpha=0.05)
    assert spared["controls_ok"].all() and spared.loc[spared["method"] == "m", "verdict"].item() == "SUCCESS"
    assert power_summary(spared, 0.05).iloc[0]["retrain_false_alarms"] == 0
    flagged = add_verdicts(frame(0.02), 0.03, alpha=0.05)
    assert not flagged["controls_ok"].any()
    assert flagged.loc[flagged["method"] == "m", "verdict"].item() == "INCONCLUSIVE"
    assert power_summary(flagged, 0.05).iloc[0]["retrain_false_alarms"] == 1
    # at α = 0.01 the threshold is 0.005: p = 0.02 is no alarm
    assert add_verdicts(frame(0.02), 0.03, alpha=0.01)["controls_ok"].all()
