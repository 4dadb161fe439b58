"""The report from a small fixture summary: numbers, labels and sentences checked against the fixture.

The fixture is written out by hand (per-cell AUCs, Δs, test outcomes and verdicts per
seed) so the expected values do not come from the library under test. Two forget sets:
on ``structured`` the controls pass; on ``scattered`` the baseline is caught in only
1 of 2 seeds, so the audit must call nothing SUCCESS there.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scunlearn import ScunlearnError
from scunlearn.audit.summary import SUMMARY_COLUMNS
from scunlearn.report import build_report, captions, status, table_adversarial, vs_finetune
from scunlearn.report.figures import FIGURE_CAPTIONS, read_trajectories
from scunlearn.report.tables import BELOW_BOTH, BETTER, NO_BETTER

ROOT = Path(__file__).resolve().parents[2]
TOL = 0.03
MARGIN = 0.05
FLOORS = {"structured": 0.48, "scattered": 0.50}
METHODS = {"baseline": "baseline", "retrain": "retrain", "frozen_single": "frozen_critic",
           "extragradient_l5": "extragradient", "extragradient_l10": "extragradient",
           "fisher": "fisher", "finetune": "retain_finetune"}
# The paper's MLP-attack AUC per (forget set, variant) for seeds 0 and 1; paper status of the mean noted.
AUCS = {
    ("structured", "baseline"): [0.77, 0.75],            # LEAK
    ("structured", "frozen_single"): [0.99, 0.97],       # FAIL
    ("structured", "extragradient_l5"): [0.38, 0.40],    # OVER-UNLEARN
    ("structured", "extragradient_l10"): [0.46, 0.53],   # SUCCESS (seeds: SUCCESS, FAIL)
    ("structured", "fisher"): [0.80, 0.84],              # FAIL
    ("structured", "finetune"): [0.70, 0.72],            # FAIL
    ("structured", "retrain"): [0.47, 0.49],             # TARGET
    ("scattered", "baseline"): [0.50, 0.52],             # NO-LEAK: the MLP attack misses it
    ("scattered", "frozen_single"): [0.95, 0.97],
    ("scattered", "extragradient_l5"): [0.44, 0.46],
    ("scattered", "extragradient_l10"): [0.50, 0.52],    # SUCCESS, both seeds
    ("scattered", "fisher"): [0.49, 0.51],               # SUCCESS
    ("scattered", "finetune"): [0.55, 0.57],
    ("scattered", "retrain"): [0.49, 0.51],
}
# Per-cell audit per (forget set, variant): per seed (pc_auc, Δ vs retrain, test, verdict),
# then the Δ vs the fine-tuning control (mean, CI low, CI high) shared by both seeds.
PC = {
    ("structured", "baseline"): ([(0.80, 0.30, "ABOVE", "LEAK"), (0.78, 0.28, "ABOVE", "LEAK")], None),
    ("structured", "retrain"): ([(0.51, 0.01, "UNDECIDED", "TARGET"), (0.49, -0.01, "UNDECIDED", "TARGET")], None),
    ("structured", "frozen_single"): ([(0.75, 0.25, "ABOVE", "FAIL"), (0.77, 0.27, "ABOVE", "FAIL")],
                                      (0.10, 0.04, 0.16)),
    ("structured", "extragradient_l5"): ([(0.36, -0.14, "BELOW", "OVER-UNLEARN"),
                                          (0.38, -0.12, "BELOW", "OVER-UNLEARN")], (-0.28, -0.34, -0.22)),
    ("structured", "extragradient_l10"): ([(0.51, 0.01, "EQUIVALENT", "SUCCESS"),
                                           (0.52, 0.02, "EQUIVALENT", "SUCCESS")], (-0.13, -0.20, -0.06)),
    ("structured", "fisher"): ([(0.61, 0.11, "ABOVE", "FAIL"), (0.63, 0.13, "ABOVE", "FAIL")],
                               (-0.03, -0.09, 0.03)),
    ("structured", "finetune"): ([(0.65, 0.15, "ABOVE", "FAIL"), (0.66, 0.16, "ABOVE", "FAIL")], None),
    ("scattered", "baseline"): ([(0.60, 0.10, "ABOVE", "LEAK"), (0.53, 0.03, "UNDECIDED", "INCONCLUSIVE")], None),
    ("scattered", "retrain"): ([(0.50, 0.0, "UNDECIDED", "TARGET"), (0.50, 0.0, "UNDECIDED", "TARGET")], None),
    ("scattered", "frozen_single"): ([(0.70, 0.20, "ABOVE", "FAIL"), (0.72, 0.22, "ABOVE", "FAIL")],
                                     (0.15, 0.08, 0.22)),
    ("scattered", "extragradient_l5"): ([(0.49, -0.01, "EQUIVALENT", "INCONCLUSIVE"),
                                         (0.50, 0.0, "EQUIVALENT", "INCONCLUSIVE")], (-0.05, -0.12, 0.02)),
    ("scattered", "extragradient_l10"): ([(0.50, 0.0, "EQUIVALENT", "INCONCLUSIVE"),
                                          (0.51, 0.01, "EQUIVALENT", "INCONCLUSIVE")], (-0.04, -0.11, 0.03)),
    ("scattered", "fisher"): ([(0.51, 0.01, "EQUIVALENT", "INCONCLUSIVE"),
                              (0.50, 0.0, "EQUIVALENT", "INCONCLUSIVE")], (-0.05, -0.12, 0.02)),
    ("scattered", "finetune"): ([(0.55, 0.05, "UNDECIDED", "INCONCLUSIVE"),
                                (0.56, 0.06, "UNDECIDED", "INCONCLUSIVE")], None),
}
P_VS_RETRAIN = {0: 0.0004, 1: 0.02}
DELTA_HALF = 0.04     # half-width of every model's Δ-vs-retrain CI
DELTA_SE = 0.02
WALL = {"baseline": 300.0, "retrain": 600.0, "frozen_single": 120.0, "extragradient_l5": 2400.0,
        "extragradient_l10": 2600.0, "fisher": 90.0, "finetune": 200.0}


def _paper(auc: float, forget_set: str, method: str) -> str:
    """The paper's band rule, written out independently of the library."""
    floor = FLOORS[forget_set]
    if method == "retrain":
        return "TARGET"
    if auc > floor + TOL + 1e-12:
        return "LEAK" if method == "baseline" else "FAIL"
    if method == "baseline":
        return "NO-LEAK"
    if auc < floor - TOL - 1e-12:
        return "OVER-UNLEARN"
    return "SUCCESS"


def make_summary(variants=tuple(METHODS)) -> pd.DataFrame:
    """Fixture summary: 2 forget sets x variants x 2 seeds, utility values from a fixed RNG."""
    rng = np.random.default_rng(0)
    has_control = "finetune" in variants
    rows = []
    for (fs, variant), aucs in AUCS.items():
        if variant not in variants:
            continue
        method = METHODS[variant]
        seeds, dft = PC[(fs, variant)]
        controls_ok = fs == "structured"
        for seed, auc in enumerate(aucs):
            pc, delta, test, verdict = seeds[seed]
            floor = FLOORS[fs]
            wall = WALL[variant] + 10 * seed + (5 if fs == "scattered" else 0)
            rows.append({
                "run": "fixture", "dataset": "simulated", "forget_set": fs, "method": method,
                "variant": variant, "param_hash": f"h{len(variant)}", "seed": seed,
                "pc_auc": pc, "pc_auc_ci_low": pc - 0.1, "pc_auc_ci_high": pc + 0.1,
                "pc_auc_cell_type": pc - 0.02, "pc_auc_all": pc + 0.01, "pc_lr_auc": pc,
                "pc_tpr_at_1pct_fpr": 0.05, "pc_tpr_at_0.1pct_fpr": 0.01, "pc_forget_score": delta,
                "forget_gap_closed": 1 - delta / 0.29 if fs == "structured" else np.nan,
                "delta_vs_retrain": delta, "delta_ci_low": delta - DELTA_HALF,
                "delta_ci_high": delta + DELTA_HALF, "delta_se": DELTA_SE,
                "p_vs_retrain": P_VS_RETRAIN[seed], "tost_p_vs_retrain": 0.01,
                "test_vs_retrain": test, "n_references": 3, "verdict": verdict, "controls_ok": controls_ok,
                # no controls stage here: the controls are counted over these rows' seeds
                "controls_baseline_caught": np.nan, "controls_n_baseline": np.nan,
                "controls_false_alarms": np.nan, "controls_n_retrain": np.nan,
                "delta_vs_finetune": dft[0] if dft and has_control else np.nan,
                "dft_ci_low": dft[1] if dft and has_control else np.nan,
                "dft_ci_high": dft[2] if dft and has_control else np.nan,
                "p_vs_finetune": 0.01 if dft and has_control else np.nan,
                "auc": auc, "auc_sd": 0.05, "auc_ci_low": max(auc - 0.1, 0.0), "auc_ci_high": min(auc + 0.1, 1.0),
                "tpr_at_1pct_fpr": rng.uniform(0, 0.2), "tpr_at_5pct_fpr": rng.uniform(0, 0.3),
                "loss_attack_auc": rng.uniform(0.4, 0.7), "floor": floor, "floor_sd": 0.01,
                "floor_min": floor - 0.01, "floor_max": floor + 0.01, "band_low": floor - TOL,
                "band_high": floor + TOL, "paper_verdict": _paper(auc, fs, method),
                "ci_overlaps_floor_range": auc - 0.1 <= floor + 0.01, "n_forget": 30,
                "n_negatives": 194, "recon_mse": rng.uniform(0.1, 0.3),
                "marker_mse": rng.uniform(1e-4, 5e-4), "val_elbo": rng.uniform(-1500, -1200),
                "latent_acc": rng.uniform(0.8, 0.96), "wall_s": wall,
                "max_rss_mb": rng.uniform(500, 900),
                "cost_vs_retrain": wall / (600 + 10 * seed + (5 if fs == "scattered" else 0)),
                "compute_vs_retrain": 0.25 if method not in ("baseline", "retrain") else (
                    1.0 if method == "retrain" else np.nan),
                "dp_epsilon": np.nan, "dp_delta": np.nan,  # only dp_retrain models have them
                "setup_cost_vs_retrain": np.nan,
            })
    df = pd.DataFrame(rows)[SUMMARY_COLUMNS]
    df.loc[(df["variant"] == "fisher") & (df["seed"] == 1), ["wall_s", "cost_vs_retrain"]] = np.nan
    return df


def make_trajectories(tmp_path, summary):
    """Trajectory TSVs as the methods write them now: an epoch-0 baseline row, per-epoch
    forget_loss / val_loss / loss_gap, gradient shares, a sparse shadow_auc (extragradient
    only), Fisher's several epoch-0 scrub rows, a ``final`` row; plus one log with none of
    the plotted columns (skipped)."""
    out = []
    for row in summary[summary["method"].isin(["extragradient", "fisher", "frozen_critic"])].itertuples():
        path = tmp_path / "traj" / f"{row.variant}_{row.forget_set}_{row.seed}.tsv"
        path.parent.mkdir(exist_ok=True)
        if row.method == "extragradient":
            epochs = np.arange(6)
            df = pd.DataFrame({"epoch": epochs, "phase": ["baseline"] + ["train"] * 5,
                               "forget_loss": 0.90 + 0.01 * epochs, "val_loss": 0.95 + 0 * epochs,
                               "loss_gap": -0.05 + 0.01 * epochs,
                               "shadow_auc": [np.nan, 0.70, np.nan, 0.6, np.nan, 0.5 + 0.01 * row.seed],
                               "grad_share_retain": 0.6, "grad_share_attack": 0.4})
            df = pd.concat([df, pd.DataFrame([{"epoch": 5, "phase": "final", "forget_loss": 0.95,
                                                "val_loss": 0.95, "loss_gap": 0.0}])], ignore_index=True)
        elif row.method == "fisher":
            df = pd.DataFrame({"epoch": [0, 0, 0, 1, 2, 2], "step": [0, 1, 2, 2, 2, 2],
                               "phase": ["baseline", "scrub", "scrub", "finetune", "finetune", "final"],
                               "forget_loss": [0.9, 0.93, 0.96, 0.94, 0.93, 0.93],
                               "val_loss": [0.95] * 6, "retain_loss": [0.8] * 6})
        else:  # a log without any plotted column: skipped
            df = pd.DataFrame({"epoch": [0, 1], "grad_share_critic": [0.5, 0.4]})
        df.to_csv(path, sep="\t", index=False)
        out.append({"variant": row.variant, "method": row.method, "forget_set": row.forget_set,
                    "seed": row.seed, "path": str(path)})
    return out


CONFIG = {"run": "fixture", "audit": {"tolerance": TOL, "equivalence_margin": MARGIN},
          "methods": {"fisher": {"method": "fisher"}}}
PROVENANCE = {"packages": {"torch": "2.5.0", "scanpy": "1.10.0"},
              "data_sha256": {"raw.h5ad": "abc123"}, "git_commit": "deadbeef"}


def _check_png(path):
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    data = path.with_suffix(".tsv")
    assert data.exists() and data.stat().st_size > 0, data


def _table(index, stem):
    return pd.read_csv(index.parent / "tables" / f"{stem}.tsv", sep="\t")


def _html_row(page: str, table_id: str, *needles: str) -> str:
    """The one <tr> of table ``table_id`` on the page that contains every needle."""
    table = page.split(f'<table id="{table_id}"', 1)[1].split("</table>", 1)[0]
    rows = [r for r in re.findall(r"<tr.*?</tr>", table, flags=re.S) if all(n in r for n in needles)]
    assert len(rows) == 1, (needles, rows)
    return rows[0]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    summary = make_summary()
    summary_tsv = tmp_path / "summary.tsv"
    summary.to_csv(summary_tsv, sep="\t", index=False)
    index = build_report(summary_tsv, make_trajectories(tmp_path, summary), tmp_path / "report",
                         CONFIG, PROVENANCE)
    return summary, index


def test_power_section_opens_the_page(report):
    _, index = report
    page = index.read_text()
    body = page.split("</nav>", 1)[1]
    assert body.index('id="power"') < body.index('id="method_comparison"') < body.index("Table II")
    assert "Audit power on this study" in body.split('id="method_comparison"')[0]
    # scattered: the baseline caught in 1 of 2 seeds -> the controls failed, nothing is SUCCESS
    scattered = [p for p in re.findall(r'<p class="(?:alert|ok)">.*?</p>', page, flags=re.S)
                 if "<b>scattered</b>" in p]
    assert len(scattered) == 1
    assert "the baseline was detected in 1 of 2 seeds" in scattered[0]
    assert "this audit could not catch the un-unlearned baseline, so it calls nothing SUCCESS" in scattered[0]
    structured = [p for p in re.findall(r'<p class="(?:alert|ok)">.*?</p>', page, flags=re.S)
                  if "<b>structured</b>" in p]
    assert "detected in 2 of 2 seeds" in structured[0] and "0 of 2 false alarms" in structured[0]
    assert "the controls passed" in structured[0] and "calls nothing SUCCESS" not in structured[0]
    assert "3 reference models" in structured[0]
    power = _table(index, "audit_power").set_index("forget_set")
    assert power.loc["scattered", "baseline_caught"] == 1 and power.loc["scattered", "n_baseline"] == 2
    assert not power.loc["scattered", "controls_ok"] and power.loc["structured", "controls_ok"]
    assert power.loc["structured", "baseline_delta_mean"] == pytest.approx(0.29)
    # Student t with n_references − 1 = 2 degrees of freedom (the retrained models' null): 4.303 + 0.842
    assert power.loc["structured", "min_detectable_delta"] == pytest.approx((4.302653 + 0.841621) * DELTA_SE,
                                                                            rel=1e-4)
    row = _html_row(page, "audit_power", "scattered")
    assert "1 of 2" in row and "FAILED" in row


def test_power_sentence_for_false_alarms(tmp_path):
    summary = make_summary(variants=("baseline", "retrain", "extragradient_l10"))
    summary.loc[(summary["forget_set"] == "structured") & (summary["method"] == "retrain")
                & (summary["seed"] == 1), "test_vs_retrain"] = "BELOW"
    page = build_report(summary, [], tmp_path / "r", CONFIG, PROVENANCE).read_text()
    sentence = [p for p in re.findall(r'<p class="alert">.*?</p>', page, flags=re.S) if "<b>structured</b>" in p]
    assert "raised 1 of 2 false alarms" in sentence[0]
    assert "flagged retrained models that never saw the forget cells, so it calls nothing SUCCESS" in sentence[0]


def test_method_comparison_numbers(report):
    summary, index = report
    comp = _table(index, "method_comparison")
    assert list(comp.loc[comp["forget_set"] == "structured", "variant"]) == [
        "baseline", "frozen_single", "extragradient_l5", "extragradient_l10", "fisher", "finetune", "retrain"]
    for row in comp.itertuples():
        seeds, dft = PC[(row.forget_set, row.variant)]
        assert row.pc_auc_mean == pytest.approx(statistics.mean(s[0] for s in seeds))
        assert row.delta_mean == pytest.approx(statistics.mean(s[1] for s in seeds))
        assert row.delta_ci_low_mean == pytest.approx(row.delta_mean - DELTA_HALF)
        assert row.delta_ci_high_mean == pytest.approx(row.delta_mean + DELTA_HALF)
        assert row.p_vs_retrain_min == P_VS_RETRAIN[0] and row.p_vs_retrain_max == P_VS_RETRAIN[1]
        if dft is not None:
            assert (row.dft_mean, row.dft_ci_low_mean, row.dft_ci_high_mean) == pytest.approx(dft)
        assert row.n_seeds == 2
    by = comp.set_index(["forget_set", "variant"])
    # exact numbers in the TSV (no rounding): 1 - delta/0.29 averaged over the seeds
    assert by.loc[("structured", "fisher"), "forget_gap_closed"] == pytest.approx(
        statistics.mean([1 - 0.11 / 0.29, 1 - 0.13 / 0.29]), abs=1e-12)
    assert by.loc[("structured", "extragradient_l10"), "verdicts"] == "2 SUCCESS"
    assert by.loc[("scattered", "baseline"), "verdicts"] == "1 LEAK, 1 INCONCLUSIVE"
    assert by.loc[("scattered", "extragradient_l10"), "verdicts"] == "2 INCONCLUSIVE"
    assert by.loc[("structured", "extragradient_l10"), "cost_vs_retrain"] == pytest.approx(
        statistics.mean([2600 / 600, 2610 / 610]))
    assert by.loc[("structured", "extragradient_l10"), "costs_more_than_retrain"]
    assert not by.loc[("structured", "fisher"), "costs_more_than_retrain"]
    assert not by.loc[("structured", "retrain"), "costs_more_than_retrain"]


def test_vs_finetune_labels(report):
    _, index = report
    by = _table(index, "method_comparison").set_index(["forget_set", "variant"])["vs_finetune"].fillna("")
    assert by[("structured", "extragradient_l10")] == BETTER == "better than fine-tuning"   # CI [-0.20, -0.06]
    assert by[("structured", "fisher")] == NO_BETTER == "no better than fine-tuning"    # CI [-0.09, 0.03]
    assert by[("structured", "frozen_single")] == NO_BETTER                             # CI above 0
    assert by[("structured", "extragradient_l5")] == BELOW_BOTH                         # also below retrain
    assert by[("structured", "finetune")] == "control"
    assert by[("structured", "baseline")] == "" and by[("structured", "retrain")] == ""
    page = index.read_text()
    assert "This study has no fine-tuning control" not in page
    better = _html_row(page, "method_comparison", ">structured<", ">extragradient_l10<")
    assert '<td class="txt lbl good">better than fine-tuning</td>' in better
    assert "costs more than retraining" in better
    assert "−0.130 [−0.200, −0.060]" in better           # Δ vs fine-tuning, rounded in HTML only
    assert "+0.015 [−0.025, +0.055]" in better           # Δ vs retrain
    assert "&lt;0.001–0.020" in better                    # per-seed p range
    worse = _html_row(page, "method_comparison", ">structured<", ">fisher<")
    assert "no better than fine-tuning" in worse and "costs more than retraining" not in worse


def test_vs_finetune_rule_and_missing_control(tmp_path):
    assert vs_finetune("fisher", -0.2, -0.001) == BETTER
    assert vs_finetune("fisher", -0.2, 0.0) == NO_BETTER        # touching 0 is not excluding it
    assert vs_finetune("fisher", -0.2, -0.01, delta_ci_high=-0.02) == BELOW_BOTH
    assert vs_finetune("fisher", float("nan"), float("nan")) == "no control in this study"
    summary = make_summary(variants=("baseline", "retrain", "extragradient_l10", "fisher"))
    index = build_report(summary, [], tmp_path / "r", CONFIG, PROVENANCE)
    comp = _table(index, "method_comparison").set_index(["forget_set", "variant"])
    assert comp.loc[("structured", "extragradient_l10"), "vs_finetune"] == "no control in this study"
    assert comp["dft_mean"].isna().all()
    page = index.read_text()
    assert "This study has no fine-tuning control" in page
    assert "vs fine-tuning</th>" not in page.split('<table id="method_comparison"')[1].split("</thead>")[0]


def _paper_expected(fs, variant):
    aucs = AUCS[(fs, variant)]
    method = METHODS[variant]
    mean = statistics.mean(aucs)
    rate = sum(_paper(a, fs, method) == "SUCCESS" for a in aucs) / len(aucs)
    return {"auc_mean": mean, "auc_sd": statistics.stdev(aucs), "gap_to_floor": mean - FLOORS[fs],
            "paper_status": _paper(mean, fs, method),
            "paper_success_rate": np.nan if method in ("baseline", "retrain") else rate}


def test_table2_paper_rule_with_per_cell_beside(report):
    _, index = report
    t2 = _table(index, "table2_adversarial")
    assert list(t2["variant"]) == ["baseline", "frozen_single", "extragradient_l5",
                                   "extragradient_l10", "retrain"]  # no Fisher, no control
    for row in t2.itertuples():
        exp = _paper_expected("structured", row.variant)
        assert row.auc_mean == pytest.approx(exp["auc_mean"])
        assert row.auc_sd == pytest.approx(exp["auc_sd"])
        assert row.gap_to_floor == pytest.approx(exp["gap_to_floor"])
        assert row.paper_status == exp["paper_status"]
        assert row.paper_success_rate == pytest.approx(exp["paper_success_rate"], nan_ok=True)
        seeds, _ = PC[("structured", row.variant)]
        assert row.pc_auc_mean == pytest.approx(statistics.mean(s[0] for s in seeds))
    by = t2.set_index("variant")
    assert by.loc["extragradient_l10", "paper_status"] == "SUCCESS"
    assert by.loc["extragradient_l10", "paper_success_rate"] == 0.5
    assert by.loc["extragradient_l10", "verdicts"] == "2 SUCCESS"
    assert by.loc["extragradient_l5", "verdicts"] == "2 OVER-UNLEARN"
    page = index.read_text()
    assert "The paper's tables (the paper's band rule on its MLP attack)" in page
    assert "(the paper&#x27;s rule)" in page.split('<table id="table2_adversarial"')[0].rsplit("<h3>", 1)[1]


def test_table3_fisher_and_paper_no_leak(report):
    _, index = report
    t3 = _table(index, "table3_fisher").set_index("forget_set")
    assert list(t3.index) == ["structured", "scattered"]
    for fs in t3.index:
        exp = _paper_expected(fs, "fisher")
        assert t3.loc[fs, "auc_mean"] == pytest.approx(exp["auc_mean"])
        assert t3.loc[fs, "paper_status"] == exp["paper_status"]
    assert t3.loc["structured", "paper_status"] == "FAIL" and t3.loc["scattered", "paper_status"] == "SUCCESS"
    # the paper's rule lets scattered's baseline through; the per-cell audit catches it in one seed
    ta = _table(index, "table_all").set_index(["forget_set", "variant"])
    assert ta.loc[("scattered", "baseline"), "paper_status"] == "NO-LEAK"
    assert ta.loc[("scattered", "baseline"), "verdicts"] == "1 LEAK, 1 INCONCLUSIVE"


def test_table4_utility(report):
    summary, index = report
    t4 = _table(index, "table4_utility").set_index("metric")
    assert list(t4.columns) == ["baseline", "extragradient_l5", "extragradient_l10", "fisher", "retrain"]
    for variant in t4.columns:
        rows = summary[summary["variant"] == variant]
        for metric in ["recon_mse", "marker_mse", "latent_acc", "val_elbo", "wall_s", "max_rss_mb"]:
            values = [v for v in rows[metric] if not np.isnan(v)]
            assert t4.loc[metric, variant] == pytest.approx(statistics.mean(values)), (variant, metric)
        assert t4.loc["n_models", variant] == 4
    retrain_wall = statistics.mean([600, 610, 605, 615])
    assert t4.loc["cost_vs_retrain", "fisher"] == pytest.approx(statistics.mean([90, 95]) / retrain_wall)


def test_figures_and_page(report):
    _, index = report
    page = index.read_text()
    assert page.count('<img src="data:image/png;base64,') == len(FIGURE_CAPTIONS) == 7
    for stem in FIGURE_CAPTIONS:
        _check_png(index.parent / "figures" / f"{stem}.png")
    # the main figure sits with the comparison table, before the paper's tables
    assert page.index('id="fig1_per_cell_audit"') < page.index("Table II")
    assert "Figure 3. The paper&#x27;s MLP attack" in page
    fig1 = pd.read_csv(index.parent / "figures" / "fig1_per_cell_audit.tsv", sep="\t")
    structured = fig1[fig1["forget_set"] == "structured"]
    assert (structured["retrain_pc_auc_min"] == 0.49).all() and (structured["retrain_pc_auc_max"] == 0.51).all()
    assert "<td>0.495</td>" in page                      # Table II's extragradient_l10 mean AUC, rounded
    assert 'class="txt v-OVER-UNLEARN"' in page
    assert "tolerance: 0.03" in page and "equivalence_margin: 0.05" in page
    assert "deadbeef" in page and "abc123" in page and "torch" in page  # provenance
    assert "fixture" in page.split("</h1>")[0]


def test_trajectories_with_new_columns(report):
    _, index = report
    traj = pd.read_csv(index.parent / "figures" / "fig2_trajectories.tsv", sep="\t")
    assert set(traj["metric"]) == {"shadow_auc", "forget_loss", "val_loss"}   # grad shares ignored
    assert "frozen_single" not in set(traj["variant"])                        # nothing to plot: skipped
    eg = traj[(traj["variant"] == "extragradient_l10") & (traj["forget_set"] == "structured") & (traj["seed"] == 1)]
    shadow = eg[eg["metric"] == "shadow_auc"]
    assert list(shadow["epoch"]) == [1, 3, 5] and list(shadow["value"]) == [0.70, 0.6, 0.51]
    assert (shadow["posthoc_auc"] == 0.53).all()
    forget = eg[eg["metric"] == "forget_loss"]
    assert list(forget["epoch"]) == [0, 1, 2, 3, 4, 5, 5] and forget["phase"].iloc[-1] == "final"
    fisher = traj[(traj["variant"] == "fisher") & (traj["metric"] == "forget_loss")
                  & (traj["forget_set"] == "structured") & (traj["seed"] == 0)]
    assert list(fisher["epoch"]) == [0, 0, 0, 1, 2, 2]                     # scrub steps kept in order


def test_trajectory_without_epoch_is_named(tmp_path):
    path = tmp_path / "bad.tsv"
    pd.DataFrame({"forget_loss": [1.0]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(ScunlearnError, match="bad.tsv.*epoch"):
        read_trajectories([{"variant": "v", "method": "m", "forget_set": "f", "seed": 0, "path": str(path)}])


def test_without_trajectories_or_adversarial_methods(tmp_path):
    summary = make_summary(variants=("baseline", "retrain", "frozen_single", "fisher"))
    index = build_report(summary, [], tmp_path / "report", CONFIG, PROVENANCE)
    assert index.read_text().count('<img src="data:image/png;base64,') == 7
    for stem in FIGURE_CAPTIONS:
        _check_png(index.parent / "figures" / f"{stem}.png")
    assert list(_table(index, "table2_adversarial")["variant"]) == ["baseline", "frozen_single", "retrain"]
    assert list(_table(index, "table4_utility").columns) == ["metric", "baseline", "fisher", "retrain"]


def test_paper_status_rule_edges():
    assert status(0.51, 0.45, 0.51, "extragradient") == "SUCCESS"  # edge is in band
    assert status(0.5101, 0.45, 0.51, "extragradient") == "FAIL"
    assert status(0.5101, 0.45, 0.51, "baseline") == "LEAK"
    assert status(0.50, 0.45, 0.51, "baseline") == "NO-LEAK"
    assert status(0.4499, 0.45, 0.51, "fisher") == "OVER-UNLEARN"
    assert status(0.9, 0.45, 0.51, "retrain") == "TARGET"
    assert status(float("nan"), 0.45, 0.51, "fisher") == "NA"


def test_bad_summary_is_named(tmp_path):
    bad = make_summary()
    bad.loc[3, "verdict"] = "MAYBE"
    path = tmp_path / "summary_bad.tsv"
    bad.to_csv(path, sep="\t", index=False)
    with pytest.raises(ScunlearnError, match=r"summary_bad\.tsv: unknown verdict value\(s\) \['MAYBE'\]"):
        build_report(path, [], tmp_path / "r", CONFIG, PROVENANCE)
    old = make_summary()
    old.loc[0, "paper_verdict"] = "PASS"
    old.to_csv(path, sep="\t", index=False)
    with pytest.raises(ScunlearnError, match=r"summary_bad\.tsv: unknown paper_verdict value\(s\) \['PASS'\]"):
        build_report(path, [], tmp_path / "r", CONFIG, PROVENANCE)
    make_summary().drop(columns=["delta_vs_retrain"]).to_csv(path, sep="\t", index=False)
    with pytest.raises(ScunlearnError, match=r"summary_bad\.tsv: missing required column\(s\) delta_vs_retrain"):
        build_report(path, [], tmp_path / "r", CONFIG, PROVENANCE)
    with pytest.raises(ScunlearnError, match="not in the summary"):
        table_adversarial(make_summary(), forget_set="nope")
    with pytest.raises(ScunlearnError, match="missing.tsv"):
        build_report(tmp_path / "missing.tsv", [], tmp_path, CONFIG, PROVENANCE)


def test_na_paper_verdict_round_trips(tmp_path):
    """``NA`` (no MLP AUC) is read back by pandas as NaN; the report must take it as NA."""
    summary = make_summary(variants=("baseline", "retrain", "fisher"))
    summary.loc[summary["variant"] == "fisher", ["auc", "paper_verdict"]] = [np.nan, "NA"]
    path = tmp_path / "summary.tsv"
    summary.to_csv(path, sep="\t", index=False)
    index = build_report(path, [], tmp_path / "r", CONFIG, PROVENANCE)
    t3 = pd.read_csv(index.parent / "tables/table3_fisher.tsv", sep="\t", keep_default_na=False)
    assert set(t3["paper_status"]) == {"NA"}
    assert '<td class="txt v-NA">NA</td>' in index.read_text()


def _smk_list(name: str) -> list[str]:
    text = (ROOT / "workflow/rules/report.smk").read_text()
    block = re.search(rf"^{name} = \[(.*?)\]", text, flags=re.S | re.M).group(1)
    return re.findall(r'"([^"]+)"', block)


def test_report_rule_outputs_match_what_is_produced(report):
    _, index = report
    assert _smk_list("REPORT_FIGURES") == list(captions.FIGURES) == list(FIGURE_CAPTIONS)
    assert _smk_list("REPORT_TABLES") == list(captions.TABLES)
    assert sorted(p.stem for p in (index.parent / "figures").glob("*.png")) == sorted(captions.FIGURES)
    assert sorted(p.stem for p in (index.parent / "tables").glob("*.tsv")) == sorted(captions.TABLES)


def test_caption_files_are_generated_from_captions():
    """The .rst captions of the Snakemake report are generated from scunlearn.report.captions."""
    folder = ROOT / "workflow/report"
    for stem in captions.stems():
        assert (folder / f"{stem}.rst").read_text() == captions.rst(stem), (
            f"{stem}.rst is stale: run python -m scunlearn.report workflow/report")
    produced = {p.stem for p in folder.glob("fig*.rst")} | {p.stem for p in folder.glob("table*.rst")}
    assert produced <= set(captions.stems()), "caption files of figures/tables that no longer exist"


def test_every_variant_gets_its_own_colour_beyond_ten():
    """14 methods (the paper's and the literature's) must not share colours in the figures."""
    from scunlearn.report.figures import variant_palette

    rows = [{"variant": "baseline", "method": "baseline"}, {"variant": "retrain", "method": "retrain"}]
    rows += [{"variant": f"v{i}", "method": f"m{i}", "forget_set": "a"} for i in range(14)]
    pal = variant_palette(pd.DataFrame(rows).assign(forget_set="a", seed=0))
    others = [pal[f"v{i}"] for i in range(14)]
    assert len(set(others)) == 14
    assert pal["retrain"] == (0.0, 0.0, 0.0) and pal["baseline"] not in others


def test_table2_holds_only_the_papers_adversarial_methods():
    """A literature method (here ssd, renamed from the fisher rows) is not listed as adversarial."""
    summary = make_summary()
    summary.loc[summary["variant"] == "fisher", ["method", "variant"]] = ["ssd", "ssd"]
    t2 = table_adversarial(summary)
    assert "ssd" not in set(t2["variant"]) and "finetune" not in set(t2["variant"])
    assert {"frozen_single", "extragradient_l5", "baseline", "retrain"} <= set(t2["variant"])


def test_not_comparable_variants_get_their_claims_stated():
    """sisa / dp_retrain carry NOT-COMPARABLE verdicts; the report says what their numbers can and cannot support."""
    from scunlearn.report.html import render_claims_note

    s = pd.DataFrame({"variant": ["sisa", "sisa", "dp_retrain", "fisher"],
                      "method": ["sisa", "sisa", "dp_retrain", "fisher"],
                      "verdict": ["NOT-COMPARABLE", "NOT-COMPARABLE", "NOT-COMPARABLE", "FAIL"]})
    note = render_claims_note(s)
    assert note.count("<li>") == 2 and "exact unlearning by construction" in note and "e^ε·FPR + δ" in note
    assert "fisher" not in note
    assert render_claims_note(s[s["variant"] == "fisher"]) == ""


def test_controls_section_counts_every_seed_after_a_tsv_round_trip(tmp_path):
    """The report reads report/controls.tsv back from disk: its kinds, counts and null values survive."""
    from scunlearn.report.html import render_controls

    rows = [{"forget_set": "s", "kind": "retrain", "model": f"retrain/seed{i}", "pc_auc": 0.5, "pc_shift": sh,
             "delta": sh, "p": p, "outcome": o}
            for i, (sh, p, o) in enumerate([(0.1, 0.6, "UNDECIDED"), (-0.2, 0.004, "BELOW"),
                                            (0.05, 0.9, "EQUIVALENT")])]
    rows += [{"forget_set": "s", "kind": "baseline", "model": f"baseline/seed{i}", "pc_auc": 0.8, "pc_shift": 0.5,
              "delta": 0.5, "p": p, "outcome": o} for i, (p, o) in enumerate([(0.001, "ABOVE"), (0.2, "UNDECIDED")])]
    pd.DataFrame(rows).to_csv(tmp_path / "controls.tsv", sep="\t", index=False)
    page = render_controls(pd.read_csv(tmp_path / "controls.tsv", sep="\t"), alpha=0.05)
    assert "1 of 2 baseline models caught" in page
    assert "1 of 3 retrained models flagged at α/3" in page  # p 0.004 < 0.05 / 3
    assert "+0.050" in page and "−0.200" in page and page.count("retrained (OUT)") == 3


def test_the_report_opens_with_one_verdict_per_variant(tmp_path):
    """verdicts.tsv read back (empty notes come back as NaN) renders its headline, resolution and warning."""
    from scunlearn.audit.variants import RETRAIN_AS_METHOD, VERDICT_COLUMNS
    from scunlearn.report.html import render_verdicts

    rows = [
        {"forget_set": "structured", "variant": "latent_projection", "method": "latent_projection", "n_models": 2,
         "n_null": 8, "delta": 0.36, "delta_se": 0.6, "delta_ci_low": -1.0, "delta_ci_high": 1.8, "p": 0.6,
         "p_holm": 0.6, "tost_p": 0.01, "tost_p_holm": 0.03, "margin": 2.1, "margin_of_gap": 0.15,
         "resolution": 2.0, "resolution_of_gap": 0.14, "baseline_gap": 14.0, "gap_closed": 0.97,
         "verdict": "SUCCESS", "note": ""},
        {"forget_set": "scattered", "variant": "fisher", "method": "fisher", "n_models": 2, "n_null": 8,
         "delta": 0.2, "delta_se": 0.05, "delta_ci_low": 0.1, "delta_ci_high": 0.3, "p": 0.001, "p_holm": 0.002,
         "tost_p": 1.0, "tost_p_holm": 1.0, "margin": 0.1, "margin_of_gap": 0.2, "resolution": 0.17,
         "resolution_of_gap": 0.34, "baseline_gap": 0.5, "gap_closed": 0.6, "verdict": "FAIL", "note": ""},
        {"forget_set": "scattered", "variant": RETRAIN_AS_METHOD, "method": "retrain", "n_models": 2, "n_null": 6,
         "delta": 0.08, "delta_se": 0.05, "delta_ci_low": -0.03, "delta_ci_high": 0.2, "p": 0.12, "p_holm": 0.12,
         "tost_p": 0.4, "tost_p_holm": 0.4, "margin": 0.1, "margin_of_gap": 0.2, "resolution": 0.17,
         "resolution_of_gap": 0.34, "baseline_gap": 0.5, "gap_closed": 0.84, "verdict": "INCONCLUSIVE",
         "note": "equivalence control failed"},
    ]
    pd.DataFrame(rows, columns=VERDICT_COLUMNS).to_csv(tmp_path / "v.tsv", sep="\t", index=False)
    page = render_verdicts(pd.read_csv(tmp_path / "v.tsv", sep="\t"))
    assert "<b>latent_projection</b> forgot as retraining would" in page
    assert "scattered: no variant is shown equivalent" in page
    assert "The margin is finer than the resolution" in page and page.count("finer than the resolution") == 1
    assert "15% of the baseline" not in page and "14% of the baseline's lead 14.000" in page
    assert ">nan<" not in page and "Equivalence control (retrained models posing as a method): <b>INCONCLUSIVE" in page
    assert render_verdicts(None) == ""


def _verdict_rows(fs, rows, margin=0.1, baseline_gap=0.5):
    """verdicts.tsv rows of one forget set from (variant, method, delta, verdict); gap closed = 1 − Δ / gap."""
    from scunlearn.audit.variants import VERDICT_COLUMNS

    out = [{"forget_set": fs, "variant": v, "method": m, "n_models": 2, "n_null": 8, "delta": d, "delta_se": 0.05,
            "delta_ci_low": d - 0.1, "delta_ci_high": d + 0.1, "p": 0.5, "p_holm": 0.5, "tost_p": 0.01,
            "tost_p_holm": 0.02, "margin": margin, "margin_of_gap": margin / baseline_gap, "resolution": 0.08,
            "resolution_of_gap": 0.16, "baseline_gap": baseline_gap, "gap_closed": 1 - d / baseline_gap,
            "verdict": verdict, "note": ""} for v, m, d, verdict in rows]
    return pd.DataFrame(out, columns=VERDICT_COLUMNS)


def test_findings_name_the_best_method_its_cost_and_the_controls():
    from scunlearn.audit.variants import RETRAIN_AS_METHOD
    from scunlearn.report.tables import findings

    verdicts = pd.concat([
        _verdict_rows("a", [("slow", "m1", 0.02, "SUCCESS"), ("cheap", "m2", -0.02, "SUCCESS"),
                            ("far", "m3", 0.06, "SUCCESS"), ("nc", "sisa", 0.0, "NOT-COMPARABLE"),
                            (RETRAIN_AS_METHOD, "retrain", 0.01, "SUCCESS")]),
        _verdict_rows("b", [("under", "m1", 0.15, "INCONCLUSIVE"), ("past", "m2", -0.08, "INCONCLUSIVE"),
                            ("over", "m3", -6.0, "OVER-UNLEARN"), ("nc", "sisa", 0.0, "NOT-COMPARABLE"),
                            ("bad", "m4", 0.05, "FAIL"), (RETRAIN_AS_METHOD, "retrain", 0.1, "INCONCLUSIVE")]),
        _verdict_rows("c", [("fails", "m1", 0.3, "FAIL"), ("over", "m3", -0.6, "OVER-UNLEARN")])])
    summary = pd.DataFrame(
        [{"forget_set": fs, "variant": v, "cost_vs_retrain": c, "controls_ok": ok}
         for fs, ok in (("a", True), ("b", "True"), ("c", False))
         for v, c in (("slow", 0.9), ("cheap", 0.2), ("far", 0.1), ("nc", 0.01), ("under", 0.3), ("past", 2.5),
                      ("over", 0.1), ("bad", 0.1), ("fails", 0.4))]
        + [{"forget_set": "a", "variant": "cheap", "cost_vs_retrain": 0.4, "controls_ok": True}])  # mean 0.3
    f = findings(verdicts, summary).set_index("forget_set")
    # a: two SUCCESS variants equally near retraining (|Δ| 0.02): the cheaper; NOT-COMPARABLE never named
    assert f.loc["a", "variant"] == "cheap" and f.loc["a", "kind"] == "success"
    assert f.loc["a", "cost_vs_retrain"] == pytest.approx(0.3)
    assert f.loc["a", "sentence"] == (
        "a: cheap forgot as retraining would (SUCCESS: Δ −0.02 vs retrain, within the margin ±0.1), at 0.3× the cost "
        "of retraining; 3 variants succeeded, this one nearest to retraining. The judge's controls passed, and so "
        "did the equivalence control.")
    # b: no SUCCESS; of the INCONCLUSIVE ones the nearest to closing the whole gap (overshooting by 16% beats
    # falling 30% short); the over-unlearner's gap closed of 13 does not win, the FAIL nearer to 0 is not named
    assert (f.loc["b", "variant"], f.loc["b", "kind"]) == ("past", "not_worse")
    assert f.loc["b", "sentence"] == (
        "b: no method is shown to forget as retraining would; the best is past, not significantly different from "
        "retraining (INCONCLUSIVE: Δ −0.08 vs retrain, gap closed 1.16 (overshoots)), at 2.5× the cost of "
        "retraining, more than retraining itself. The judge's controls passed, but the equivalence control did not "
        "(INCONCLUSIVE): this study cannot certify even retrained models.")
    # c: nothing comparable forgot: the closest, and the failed controls
    assert (f.loc["c", "variant"], f.loc["c", "kind"]) == ("fails", "closest")
    assert f.loc["c", "sentence"] == (
        "c: no method forgot this set as retraining would; the closest was fails (FAIL: Δ +0.3 vs retrain, gap closed "
        "0.400), at 0.4× the cost of retraining. The judge's controls FAILED: nothing on this set can be called "
        "SUCCESS.")


def test_gap_closed_off_its_scale_is_marked_and_paper_rows_that_disagree_are_flagged():
    from scunlearn.report.tables import DIFFERS, gap_closed_text, paper_vs_verdicts

    assert gap_closed_text(13.371) == "13.4 (overshoots)" and gap_closed_text(1.11) == "1.11 (overshoots)"
    assert gap_closed_text(0.5) == "0.500" and gap_closed_text(1.0) == "1.000" and gap_closed_text(-1e-17) == "0.000"
    assert gap_closed_text(-0.2) == "−0.2 (widens the gap)" and gap_closed_text(np.nan) == "—"
    assert paper_vs_verdicts("SUCCESS", "2 INCONCLUSIVE") == DIFFERS  # the case: controls failed
    assert paper_vs_verdicts("SUCCESS", "1 SUCCESS, 1 FAIL") == ""
    assert paper_vs_verdicts("NO-LEAK", "2 INCONCLUSIVE") == "" and paper_vs_verdicts("NO-LEAK", "2 LEAK") == DIFFERS
    assert paper_vs_verdicts("TARGET", "2 TARGET") == "" and paper_vs_verdicts("NA", "2 FAIL") == ""


def test_the_report_opens_with_findings_and_marks_what_could_mislead(tmp_path):
    summary = make_summary()
    verdicts = pd.concat([
        _verdict_rows("structured", [("extragradient_l10", "extragradient", 0.015, "SUCCESS"),
                                     ("fisher", "fisher", 0.12, "FAIL")]),
        _verdict_rows("scattered", [("fisher", "fisher", 0.005, "INCONCLUSIVE"),
                                    ("frozen_single", "frozen_critic", 0.21, "FAIL")])])
    index = build_report(summary, make_trajectories(tmp_path, summary), tmp_path / "r", CONFIG, PROVENANCE,
                         verdicts=verdicts)
    page = index.read_text()
    block = page.split('<section id="findings">', 1)[1].split("</section>", 1)[0]
    assert page.index('<section id="findings">') < page.index('id="verdicts"') < page.index('id="power"')
    items = re.findall(r'<li class="(f-\w+)">(.*?)</li>', block)
    assert [c for c, _ in items] == ["f-success", "f-failed"]
    cost = statistics.mean([2600 / 600, 2610 / 610])
    assert items[0][1] == (
        f"<b>structured</b>: <b>extragradient_l10</b> forgot as retraining would (SUCCESS: Δ +0.015 vs retrain, "
        f"within the margin ±0.1), at {cost:.2g}× the cost of retraining, more than retraining itself. "
        "The judge&#x27;s controls passed.")
    assert items[1][1].startswith("<b>scattered</b>: no method is shown to forget as retraining would; the best is "
                                  "<b>fisher</b>, not significantly different")
    assert "The judge&#x27;s controls FAILED: nothing on this set can be called SUCCESS." in items[1][1]
    # the gap closed past retraining is marked, not shown as if on its 0–1 scale (extragradient_l5: 1.41, 1.48)
    gap = statistics.mean([1 + 0.14 / 0.29, 1 + 0.12 / 0.29])
    assert f"<td>{gap:.3g} (overshoots)</td>" in _html_row(page, "method_comparison", "structured", "extragradient_l5")
    # the paper's SUCCESS for scattered's fisher, whose seeds are INCONCLUSIVE (its controls failed), is flagged
    t3 = _table(index, "table3_fisher").set_index("forget_set")
    assert t3.loc["scattered", "paper_status"] == "SUCCESS" and t3.loc["scattered", "paper_vs_verdicts"] == "differs"
    assert pd.isna(t3.loc["structured", "paper_vs_verdicts"])  # FAIL and FAIL agree
    assert "≠ per-cell verdicts" in _html_row(page, "table3_fisher", ">scattered<")
    assert "paper status (band rule only)" in page and "the paper's band rule on the mean MLP-attack AUC only" in page


def test_figure_1_colours_by_verdict_with_not_comparable_in_the_legend_and_its_labels_apart(tmp_path, monkeypatch):
    from scunlearn.report import figures

    summary = make_summary()
    sel = summary["variant"] == "frozen_single"
    summary.loc[sel, "verdict"] = "NOT-COMPARABLE"
    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, data, out, stem: drawn.setdefault(stem, fig))
    figures.fig_per_cell_audit(figures.validate_summary(summary), tmp_path, margin=MARGIN)
    fig = drawn["fig1_per_cell_audit"]

    from matplotlib.collections import PathCollection
    from matplotlib.colors import to_rgba

    colour = {v: tuple(np.round(to_rgba(c), 3)) for v, c in figures.VERDICT_COLORS.items()}
    faces = [tuple(np.round(coll.get_facecolors()[0], 3)) for ax in fig.axes[0::2] for coll in ax.collections
             if isinstance(coll, PathCollection)]  # the seed points: one scatter each
    assert len(faces) == len(summary)
    expected = [colour[v] for fs in ("structured", "scattered") for v in summary.loc[summary["forget_set"] == fs,
                                                                                     "verdict"]]
    assert sorted(faces) == sorted(expected)  # every seed point in its verdict's colour, none in a variant's
    assert colour["NOT-COMPARABLE"] != colour["INCONCLUSIVE"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "NOT-COMPARABLE" in legend and "SUCCESS" in legend
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    r = canvas.get_renderer()
    for ax_auc, ax_d in zip(fig.axes[0::2], fig.axes[1::2]):
        a, b = ax_auc.xaxis.label.get_window_extent(r), ax_d.xaxis.label.get_window_extent(r)
        assert a.x1 < b.x0, (a, b)  # the two x-axis labels do not overlap
