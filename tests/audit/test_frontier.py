"""The privacy–cost frontier (report/frontier.tsv) and its answer: the cheapest variant certified SUCCESS."""

import numpy as np
import pandas as pd
import pytest

from scunlearn.audit.frontier import CHEAPEST_COLUMNS, FRONTIER_COLUMNS, cheapest, cheapest_sentence, frontier


def _planted():
    """One forget set with a baseline lead of 10: a fine-tuning ladder (FAIL at 0.1×, SUCCESS at 0.5×) and a method
    ladder (SUCCESS at 0.2× and 0.6×, FAIL at 0.05×), plus the equivalence control (never a frontier point)."""
    rows = [  # variant, method, delta, ci half-width, verdict
        ("ft@b0.1", "retain_finetune", 6.0, 1.0, "FAIL"), ("ft@b0.5", "retain_finetune", 0.5, 1.0, "SUCCESS"),
        ("m@b0.05", "latent_projection", 4.0, 1.0, "FAIL"), ("m@b0.2", "latent_projection", 0.8, 1.0, "SUCCESS"),
        ("m@b0.6", "latent_projection", -0.2, 1.0, "SUCCESS"),
        ("retrain (as a method)", "retrain", 0.1, 1.0, "SUCCESS"),
    ]
    verdicts = pd.DataFrame([{"forget_set": "s", "variant": v, "method": m, "n_models": 4, "delta": d,
                              "delta_ci_low": d - h, "delta_ci_high": d + h, "baseline_gap": 10.0,
                              "gap_closed": 1 - d / 10, "margin_of_gap": 0.15, "null_sd": 1.0, "verdict": vd}
                             for v, m, d, h, vd in rows])
    cost = {"ft@b0.1": 0.1, "ft@b0.5": 0.5, "m@b0.05": 0.05, "m@b0.2": 0.2, "m@b0.6": 0.6}
    summary = pd.DataFrame([{"forget_set": "s", "variant": v, "method": m, "seed": s,
                             "cost_vs_retrain": cost[v] * (1 + 0.1 * (s - 0.5)), "compute_vs_retrain": cost[v] / 2}
                            for v, m, *_ in rows[:5] for s in (0, 1)]
                           + [{"forget_set": "s", "variant": "retrain", "method": "retrain", "seed": 0,
                               "cost_vs_retrain": 1.0, "compute_vs_retrain": 1.0}])
    ladders = {v: {"line": v.split("@")[0], "budget": float(v.split("@b")[1])} for v in cost}
    return verdicts, summary, ladders


def test_frontier_rows_are_variants_with_costs_and_delta_in_units_of_the_lead():
    verdicts, summary, ladders = _planted()
    f = frontier(verdicts, summary, ladders)
    assert list(f.columns) == FRONTIER_COLUMNS
    assert set(f["variant"]) == set(ladders)  # the equivalence control is not a method
    r = f.set_index("variant").loc["m@b0.2"]
    assert r["cost_vs_retrain"] == pytest.approx(0.2) and r["compute_vs_retrain"] == pytest.approx(0.1)
    assert r["delta_of_gap"] == pytest.approx(0.08) and (r["ci_low"], r["ci_high"]) == pytest.approx((-0.02, 0.18))
    assert r["line"] == "m" and r["budget"] == 0.2 and r["null_sd_of_gap"] == pytest.approx(0.1)
    assert list(f.loc[f["line"] == "m", "variant"]) == ["m@b0.05", "m@b0.2", "m@b0.6"]  # a line, by cost
    assert f.set_index("variant")["is_control"].to_dict() == {"ft@b0.1": True, "ft@b0.5": True, "m@b0.05": False,
                                                              "m@b0.2": False, "m@b0.6": False}


def test_cheapest_success_and_fine_tuning_at_that_cost():
    verdicts, summary, ladders = _planted()
    best = cheapest(frontier(verdicts, summary, ladders))
    assert list(best.columns) == CHEAPEST_COLUMNS
    r = best.iloc[0].to_dict()
    # m@b0.2 is the cheapest SUCCESS; at ≤ 0.2× fine-tuning has only its 0.1× rung, a FAIL: the method beats it
    assert r["variant"] == "m@b0.2" and r["cost_vs_retrain"] == pytest.approx(0.2)
    assert r["finetune_variant"] == "ft@b0.1" and r["finetune_verdict"] == "FAIL" and r["beats_finetune"]
    text = cheapest_sentence(r)
    assert "m@b0.2, at 0.10× a retrain's compute (0.20× its wall time here)" in text and "ft@b0.1" in text
    # without the cheap rung the method's next SUCCESS (0.3× compute) costs more than fine-tuning's SUCCESS
    # (0.25×): the cheapest certified variant is the control, and no method earns a claim
    f = frontier(verdicts[verdicts["variant"] != "m@b0.2"], summary, ladders)
    r = cheapest(f).iloc[0].to_dict()
    assert r["variant"] == "ft@b0.5" and r["is_control"] and not r["beats_finetune"]
    assert "the fine-tuning control ft@b0.5" in cheapest_sentence(r)
    assert "no method is certified at a lower cost than plain fine-tuning" in cheapest_sentence(r)


def test_no_success_within_a_retrains_cost_is_said():
    verdicts, summary, ladders = _planted()
    verdicts.loc[verdicts["variant"].str.startswith("m@"), "verdict"] = "FAIL"
    verdicts.loc[verdicts["variant"] == "ft@b0.5", "verdict"] = "INCONCLUSIVE"
    r = cheapest(frontier(verdicts, summary, ladders)).iloc[0].to_dict()
    assert r["variant"] is None and np.isnan(r["cost_vs_retrain"])
    # fine-tuning's best point within 1× a retrain: the rung closing most of the gap (0.5×, 95%)
    assert r["finetune_variant"] == "ft@b0.5" and r["finetune_compute_vs_retrain"] == pytest.approx(0.25)
    assert cheapest_sentence(r).startswith("s: no variant is certified SUCCESS at ≤ 1× a retrain's cost.")
