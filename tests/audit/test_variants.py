"""One verdict per method variant (scunlearn.audit.variants): the two-sample test on a planted case with a
hand-computed answer, its size and the corrected leave-one-out SD against simulations of the audit's
structure, the resolution's power, Holm's rule, and the verdicts with the equivalence control."""

import math

import numpy as np
import pytest
from scipy import stats

from scunlearn.audit.variants import (
    RETRAIN_AS_METHOD,
    holm,
    loo_sd,
    resolution,
    resolve_margin,
    two_sample,
    variant_verdicts,
)


def _loo(x):
    """Leave-one-out values of retrained models: each one's value against the mean of the others."""
    x = np.asarray(x, dtype=float)
    return np.array([x[i] - np.delete(x, i).mean() for i in range(len(x))])


def test_two_sample_on_a_planted_case_by_hand():
    null, values = [1.0, -1.0, 2.0, -2.0], [3.0, 5.0]
    s0 = math.sqrt(10 / 3) * 3 / 4  # SD of the null (ddof 1) corrected by (n - 1) / n
    assert loo_sd(null) == pytest.approx(s0)
    pooled = (1 * 2.0 + 3 * s0**2) / (2 + 4 - 2)  # (K-1) s_u^2 + (n-1) s_0^2 over K + n - 2
    se = math.sqrt(pooled * (1 / 2 + 1 / 4))
    r = two_sample(values, null, margin=1.0)
    assert r["delta"] == pytest.approx(4.0) and r["delta_se"] == pytest.approx(se) and r["df"] == 4
    assert r["p"] == pytest.approx(2 * stats.t.sf(4 / se, 4))
    assert r["tost_p"] == pytest.approx(max(stats.t.sf((4 + 1) / se, 4), stats.t.sf((1 - 4) / se, 4)))
    q = stats.t.ppf(0.975, 4)
    assert (r["delta_ci_low"], r["delta_ci_high"]) == pytest.approx((4 - q * se, 4 + q * se))


def test_corrected_loo_sd_estimates_a_fresh_models_sd():
    """Leave-one-out values spread n/(n-1) wider than fresh models (they sum to 0): corrected, the mean
    of the squared SD is sigma^2; uncorrected it would be (n/(n-1))^2 sigma^2 (1.78 at n = 4)."""
    rng = np.random.default_rng(0)
    sigma, n = 2.0, 4
    est = np.array([loo_sd(_loo(rng.normal(0, sigma, n))) ** 2 for _ in range(20000)])
    assert est.mean() == pytest.approx(sigma**2, rel=0.03)
    raw = np.array([_loo(rng.normal(0, sigma, n)).std(ddof=1) ** 2 for _ in range(20000)])
    assert raw.mean() == pytest.approx(sigma**2 * (n / (n - 1)) ** 2, rel=0.03)


@pytest.mark.parametrize(("k", "n"), [(2, 8), (8, 8), (3, 5)])
def test_the_test_has_its_size_when_the_method_is_retraining(k, n):
    """The audit's structure: K method models and n retrained models, all scored against the retrained
    models' mean (the retrained ones leave-one-out). Under H0 the two-sided test rejects at ~alpha."""
    rng = np.random.default_rng(k * 100 + n)
    rejected = 0
    trials = 6000
    for _ in range(trials):
        x, u = rng.normal(0, 1, n), rng.normal(0, 1, k)
        rejected += two_sample(u - x.mean(), _loo(x), margin=0.5)["p"] < 0.05
    rate = rejected / trials
    lo, hi = stats.binom.ppf([0.0005, 0.9995], trials, 0.05) / trials
    assert lo <= rate <= hi, rate


def test_resolution_certifies_retrained_models_with_80_percent_probability():
    rng = np.random.default_rng(1)
    k, n, sigma = 4, 8, 1.5
    margin = resolution(sigma, k, n, alpha=0.05)
    certified = 0
    trials = 4000
    for _ in range(trials):
        x, u = rng.normal(0, sigma, n), rng.normal(0, sigma, k)
        certified += two_sample(u - x.mean(), _loo(x), margin=margin)["tost_p"] < 0.05
    assert 0.74 <= certified / trials <= 0.86, certified / trials  # 0.8 by construction (t quantiles)
    assert resolution(sigma, 8, n) < resolution(sigma, 2, n)  # more models, a finer resolution


def test_holm_by_hand():
    adj = holm([0.01, 0.04, 0.03, 0.2, np.nan])
    np.testing.assert_allclose(adj[:4], [0.04, 0.09, 0.09, 0.2])
    assert np.isnan(adj[4])
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0]


def test_margin_as_a_fraction_of_the_baseline_gap():
    assert resolve_margin({"of_baseline_gap": 0.1}, 14.0) == pytest.approx((1.4, 0.1))
    assert resolve_margin(0.25, 5.0) == pytest.approx((0.25, 0.05))
    m, f = resolve_margin({"of_baseline_gap": 0.1}, -1.0)  # a baseline with no lead: nothing to take 10% of
    assert np.isnan(m) and f == 0.1


def _records(null, base, variants, retrain_vals, fs="fs"):
    """Audit records as the audit writes them: a value is delta_vs_retrain + mean(pc_null)."""
    mu = float(np.mean(null))
    recs = [{"forget_set": fs, "method": "baseline", "variant": "baseline", "seed": s, "pc_null": list(null),
             "delta_vs_retrain": b - mu} for s, b in enumerate(base)]
    recs += [{"forget_set": fs, "method": "retrain", "variant": "retrain", "seed": s, "pc_null": list(null),
              "delta_vs_retrain": r - mu} for s, r in enumerate(retrain_vals)]
    for name, (method, vals) in variants.items():
        recs += [{"forget_set": fs, "method": method, "variant": name, "seed": s, "pc_null": list(null),
                  "delta_vs_retrain": v - mu} for s, v in enumerate(vals)]
    return recs


def test_variant_verdicts_with_holm_and_the_equivalence_control():
    rng = np.random.default_rng(3)
    null = _loo(rng.normal(0, 0.3, 8))  # seeds 0, 1 (train) then six reference seeds
    recs = _records(null, base=[10.0, 10.2],
                    variants={"good": ("fisher", [0.02, -0.03]), "leaky": ("scrub", [5.0, 5.3]),
                              "over": ("neggrad_plus", [-4.0, -4.4]), "shards": ("sisa", [0.0, 0.1])},
                    retrain_vals=null[:2])
    v = variant_verdicts(recs, {"of_baseline_gap": 0.1}, 0.05, {"fs": True}, [0, 1], [0, 1, *range(100, 106)])
    got = dict(zip(v["variant"], v["verdict"]))
    assert got == {"good": "SUCCESS", "leaky": "FAIL", "over": "OVER-UNLEARN", "shards": "NOT-COMPARABLE",
                   RETRAIN_AS_METHOD: "SUCCESS"}
    row = v.set_index("variant").loc["good"]
    assert row["margin"] == pytest.approx(0.1 * row["baseline_gap"]) and row["margin_of_gap"] == 0.1
    assert row["resolution_of_gap"] == pytest.approx(row["resolution"] / row["baseline_gap"])
    # Holm over the three comparable variants (sisa is not in the family)
    fam = v[v["variant"].isin(["good", "leaky", "over"])]
    np.testing.assert_allclose(fam["tost_p_holm"], holm(fam["tost_p"]))
    # failed controls, or an equivalence control that fails at a margin finer than the resolution: no SUCCESS
    v = variant_verdicts(recs, {"of_baseline_gap": 0.1}, 0.05, {"fs": False}, [0, 1], [0, 1, *range(100, 106)])
    assert dict(zip(v["variant"], v["verdict"]))["good"] == "INCONCLUSIVE"
    v = variant_verdicts(recs, 0.001, 0.05, {"fs": True}, [0, 1], [0, 1, *range(100, 106)])
    good = v.set_index("variant").loc["good"]
    assert good["verdict"] == "INCONCLUSIVE" and "below this study's resolution" in good["note"]


def test_each_forget_set_takes_its_own_margin_and_the_summary_retests_relative_ones():
    """forget_sets.NAME.equivalence_margin: a relative margin is resolved per set from its baseline's lead, and
    each model's TOST in summary.tsv is redone with it; an absolute one leaves the records' own TOST."""
    import pandas as pd

    from scunlearn.audit.summary import aggregate
    from scunlearn.audit.variants import spec_for, study_margins

    rng = np.random.default_rng(5)
    null = _loo(rng.normal(0, 0.3, 6))
    recs = []
    for fs, base in (("wide", [10.0, 10.4]), ("narrow", [0.5, 0.6])):
        for r in _records(null, base, {"m": ("fisher", [0.05, -0.02])}, null[:2], fs=fs):
            r.update({"delta_se": 0.3, "delta_vs_retrain_df": 5.0, "delta_vs_retrain_p": 0.8,
                      "delta_vs_retrain_tost_p": 0.99, "test_vs_retrain": "UNDECIDED", "auc": 0.5, "pc_auc": 0.5,
                      "pc_forget_score": 0.0, "wall_s": 1.0})
            recs.append(r)
    spec = {"wide": {"of_baseline_gap": 0.1}, "narrow": 0.05}
    assert spec_for(spec, "narrow") == 0.05 and spec_for(0.2, "wide") == 0.2
    m = study_margins(recs, spec)
    assert m["wide"][0] == pytest.approx(0.1 * m["wide"][2]) and m["narrow"][:2] == pytest.approx(
        (0.05, 0.05 / m["narrow"][2]))
    df = aggregate(recs, tolerance=0.03, alpha=0.05, margin=spec).set_index(["forget_set", "variant", "seed"])
    wide = df.loc[("wide", "m", 0)]
    assert wide["tost_p_vs_retrain"] < 0.05 and wide["test_vs_retrain"] == "EQUIVALENT"  # margin ~1.0, SE 0.3
    assert df.loc[("narrow", "m", 0), "tost_p_vs_retrain"] == 0.99  # absolute: the record's own
    assert isinstance(df, pd.DataFrame)


def test_a_margin_finer_than_the_resolution_is_a_warning_in_the_aggregate_log(caplog):
    import logging

    from scunlearn.stages.audit import log_verdicts

    rng = np.random.default_rng(7)
    null = _loo(rng.normal(0, 1.0, 8))
    recs = _records(null, base=[10.0, 10.5], variants={"m": ("fisher", [0.1, -0.2])}, retrain_vals=null[:2])
    with caplog.at_level(logging.INFO, logger="scunlearn"):
        log_verdicts(variant_verdicts(recs, 0.05, 0.05, {"fs": True}, [0, 1], [0, 1, *range(100, 106)]))
    warn = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "finer than this study's resolution" in warn[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scunlearn"):
        log_verdicts(variant_verdicts(recs, {"of_baseline_gap": 0.5}, 0.05, {"fs": True}, [0, 1],
                                      [0, 1, *range(100, 106)]))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "resolution for 2 models" in caplog.text
