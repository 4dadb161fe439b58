"""The report from a small fixture summary: table numbers checked against the fixture."""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
import pytest

from scunlearn import ScunlearnError
from scunlearn.report import build_report, status, table_adversarial
from scunlearn.report.figures import FIGURE_CAPTIONS
from scunlearn.report.tables import SUMMARY_COLUMNS

TOL = 0.03
FLOORS = {"structured": 0.48, "scattered": 0.50}
METHODS = {"baseline": "baseline", "retrain": "retrain", "frozen_single": "frozen_critic",
           "extragradient_l5": "extragradient", "extragradient_l10": "extragradient",
           "fisher": "fisher"}
# AUC per (forget set, variant) for seeds 0 and 1; the expected status of the mean is noted.
AUCS = {
    ("structured", "baseline"): [0.77, 0.75],            # LEAK
    ("structured", "frozen_single"): [0.99, 0.97],       # FAIL
    ("structured", "extragradient_l5"): [0.38, 0.40],    # OVER-UNLEARN
    ("structured", "extragradient_l10"): [0.46, 0.53],   # SUCCESS (seeds: SUCCESS, FAIL)
    ("structured", "fisher"): [0.80, 0.84],              # FAIL
    ("structured", "retrain"): [0.47, 0.49],             # TARGET
    ("scattered", "baseline"): [0.60, 0.62],
    ("scattered", "frozen_single"): [0.95, 0.97],
    ("scattered", "extragradient_l5"): [0.44, 0.46],
    ("scattered", "extragradient_l10"): [0.50, 0.52],    # SUCCESS, both seeds
    ("scattered", "fisher"): [0.49, 0.51],               # SUCCESS
    ("scattered", "retrain"): [0.49, 0.51],
}
WALL = {"baseline": 300.0, "retrain": 600.0, "frozen_single": 120.0, "extragradient_l5": 2400.0,
        "extragradient_l10": 2600.0, "fisher": 90.0}


def _verdict(auc: float, forget_set: str, method: str) -> str:
    """The band rule, written out independently of the library."""
    floor = FLOORS[forget_set]
    if method == "retrain":
        return "TARGET"
    if auc > floor + TOL + 1e-12:
        return "LEAK" if method == "baseline" else "FAIL"
    if auc < floor - TOL - 1e-12:
        return "OVER-UNLEARN"
    return "SUCCESS"


def make_summary(variants=tuple(METHODS)) -> pd.DataFrame:
    """Fixture summary: 2 forget sets x variants x 2 seeds, utility values from a fixed RNG."""
    rng = np.random.default_rng(0)
    rows = []
    for (fs, variant), aucs in AUCS.items():
        if variant not in variants:
            continue
        method = METHODS[variant]
        for seed, auc in enumerate(aucs):
            floor = FLOORS[fs]
            rows.append({
                "run": "fixture", "dataset": "simulated", "forget_set": fs, "method": method,
                "variant": variant, "param_hash": f"h{len(variant)}", "seed": seed, "auc": auc,
                "auc_sd": 0.05, "auc_ci_low": max(auc - 0.1, 0.0), "auc_ci_high": min(auc + 0.1, 1.0),
                "tpr_at_1pct_fpr": rng.uniform(0, 0.2), "tpr_at_5pct_fpr": rng.uniform(0, 0.3),
                "loss_attack_auc": rng.uniform(0.4, 0.7), "floor": floor, "floor_sd": 0.01,
                "floor_min": floor - 0.01, "floor_max": floor + 0.01, "band_low": floor - TOL,
                "band_high": floor + TOL, "verdict": _verdict(auc, fs, method),
                "ci_overlaps_floor_range": auc - 0.1 <= floor + 0.01, "n_forget": 30,
                "n_negatives": 194, "recon_mse": rng.uniform(0.1, 0.3),
                "marker_mse": rng.uniform(1e-4, 5e-4), "val_elbo": rng.uniform(-1500, -1200),
                "latent_acc": rng.uniform(0.8, 0.96),
                "wall_s": WALL[variant] + 10 * seed + (5 if fs == "scattered" else 0),
                "max_rss_mb": rng.uniform(500, 900),
            })
    df = pd.DataFrame(rows)[SUMMARY_COLUMNS]
    df.loc[(df["variant"] == "fisher") & (df["seed"] == 1), "wall_s"] = np.nan  # NaN allowed
    return df


def make_trajectories(tmp_path, summary):
    """A tiny trajectory TSV per extragradient model, plus a Fisher log without shadow_auc."""
    out = []
    for row in summary[summary["method"].isin(["extragradient", "fisher"])].itertuples():
        path = tmp_path / "traj" / f"{row.variant}_{row.forget_set}_{row.seed}.tsv"
        path.parent.mkdir(exist_ok=True)
        epochs = np.arange(6)
        if row.method == "extragradient":
            shadow = 0.75 - 0.05 * epochs + 0.01 * row.seed
            df = pd.DataFrame({"epoch": epochs, "shadow_auc": shadow, "retain_loss": 100 - epochs})
        else:
            df = pd.DataFrame({"epoch": epochs, "forget_loss": 5.0 + epochs})
        df.to_csv(path, sep="\t", index=False)
        out.append({"variant": row.variant, "method": row.method, "forget_set": row.forget_set,
                    "seed": row.seed, "path": str(path)})
    return out


CONFIG = {"run": "fixture", "audit": {"tolerance": TOL}, "methods": {"fisher": {"method": "fisher"}}}
PROVENANCE = {"packages": {"torch": "2.5.0", "scanpy": "1.10.0"},
              "data_sha256": {"raw.h5ad": "abc123"}, "git_commit": "deadbeef"}


def _check_png(path):
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    data = path.with_suffix(".tsv")
    assert data.exists() and data.stat().st_size > 0, data


def _expected(fs, variant):
    aucs = AUCS[(fs, variant)]
    method = METHODS[variant]
    mean = statistics.mean(aucs)
    rate = sum(_verdict(a, fs, method) == "SUCCESS" for a in aucs) / len(aucs)
    return {"auc_mean": mean, "auc_sd": statistics.stdev(aucs), "gap_to_floor": mean - FLOORS[fs],
            "status": _verdict(mean, fs, method),
            "success_rate": np.nan if method in ("baseline", "retrain") else rate}


@pytest.fixture
def report(tmp_path):
    summary = make_summary()
    summary_tsv = tmp_path / "summary.tsv"
    summary.to_csv(summary_tsv, sep="\t", index=False)
    index = build_report(summary_tsv, make_trajectories(tmp_path, summary), tmp_path / "report",
                         CONFIG, PROVENANCE)
    return summary, index


def test_table2_numbers_and_statuses(report):
    _, index = report
    t2 = pd.read_csv(index.parent / "tables" / "table2_adversarial.tsv", sep="\t")
    assert list(t2["variant"]) == ["baseline", "frozen_single", "extragradient_l5",
                                   "extragradient_l10", "retrain"]  # no Fisher in Table II
    for row in t2.itertuples():
        exp = _expected("structured", row.variant)
        assert row.auc_mean == pytest.approx(exp["auc_mean"])
        assert row.auc_sd == pytest.approx(exp["auc_sd"])
        assert row.gap_to_floor == pytest.approx(exp["gap_to_floor"])
        assert row.status == exp["status"]
        assert row.success_rate == pytest.approx(exp["success_rate"], nan_ok=True)
        assert row.n_seeds == 2
    by = t2.set_index("variant")["status"]
    assert by["baseline"] == "LEAK" and by["retrain"] == "TARGET"
    assert by["frozen_single"] == "FAIL"
    assert by["extragradient_l5"] == "OVER-UNLEARN"
    assert by["extragradient_l10"] == "SUCCESS"
    assert t2.set_index("variant").loc["extragradient_l10", "success_rate"] == 0.5


def test_table3_fisher(report):
    _, index = report
    t3 = pd.read_csv(index.parent / "tables" / "table3_fisher.tsv", sep="\t").set_index("forget_set")
    assert list(t3.index) == ["structured", "scattered"]
    for fs in t3.index:
        exp = _expected(fs, "fisher")
        assert t3.loc[fs, "auc_mean"] == pytest.approx(exp["auc_mean"])
        assert t3.loc[fs, "auc_sd"] == pytest.approx(exp["auc_sd"])
        assert t3.loc[fs, "status"] == exp["status"]
    assert t3.loc["structured", "status"] == "FAIL" and t3.loc["scattered", "status"] == "SUCCESS"


def test_table4_utility(report):
    summary, index = report
    t4 = pd.read_csv(index.parent / "tables" / "table4_utility.tsv", sep="\t").set_index("metric")
    assert list(t4.columns) == ["baseline", "extragradient_l5", "extragradient_l10", "fisher",
                                "retrain"]  # frozen critics are not in the paper's Table IV
    for variant in t4.columns:
        rows = summary[summary["variant"] == variant]
        for metric in ["recon_mse", "marker_mse", "latent_acc", "val_elbo", "wall_s", "max_rss_mb"]:
            values = [v for v in rows[metric] if not np.isnan(v)]
            assert t4.loc[metric, variant] == pytest.approx(statistics.mean(values)), (variant, metric)
        assert t4.loc["n_models", variant] == 4
    retrain_wall = statistics.mean([600, 610, 605, 615])
    assert t4.loc["cost_vs_retrain", "extragradient_l10"] == pytest.approx(
        statistics.mean([2600, 2610, 2605, 2615]) / retrain_wall)
    assert t4.loc["cost_vs_retrain", "fisher"] == pytest.approx(statistics.mean([90, 95]) / retrain_wall)


def test_table_all(report):
    summary, index = report
    ta = pd.read_csv(index.parent / "tables" / "table_all.tsv", sep="\t")
    assert len(ta) == len(AUCS)
    for row in ta.itertuples():
        exp = _expected(row.forget_set, row.variant)
        models = summary[(summary["forget_set"] == row.forget_set) & (summary["variant"] == row.variant)]
        assert row.auc_mean == pytest.approx(exp["auc_mean"])
        assert row.status == exp["status"]
        assert row.success_rate == pytest.approx(exp["success_rate"], nan_ok=True)
        assert row.auc_ci_low_mean == pytest.approx(statistics.mean(models["auc_ci_low"]))
        assert row.auc_ci_high_mean == pytest.approx(statistics.mean(models["auc_ci_high"]))
        assert row.latent_acc == pytest.approx(statistics.mean(models["latent_acc"]))
        offset = 5 if row.forget_set == "scattered" else 0
        walls = [WALL[row.variant] + offset + 10 * s for s in (0, 1)]
        if row.variant == "fisher":
            walls = walls[:1]
        retrain = statistics.mean([600 + offset, 610 + offset])
        assert row.wall_s == pytest.approx(statistics.mean(walls))
        assert row.cost_vs_retrain == pytest.approx(statistics.mean(walls) / retrain)
    scattered = ta[ta["forget_set"] == "scattered"].set_index("variant")
    assert scattered.loc["extragradient_l10", "success_rate"] == 1.0


def test_html_page_and_figures(report):
    _, index = report
    page = index.read_text()
    for stem in ["table2_adversarial", "table3_fisher", "table4_utility", "table_all"]:
        assert f'<table id="{stem}"' in page
    assert page.count('<img src="data:image/png;base64,') == len(FIGURE_CAPTIONS) == 5
    for stem in FIGURE_CAPTIONS:
        _check_png(index.parent / "figures" / f"{stem}.png")
    # rounded to 3 decimals: Table II's extragradient_l10 mean AUC 0.495
    assert "<td>0.495</td>" in page
    assert 'class="txt v-OVER-UNLEARN"' in page
    assert "tolerance: 0.03" in page  # config as YAML
    assert "deadbeef" in page and "abc123" in page and "torch" in page  # provenance
    assert "fixture" in page.split("</h1>")[0]
    traj = pd.read_csv(index.parent / "figures" / "fig1_trajectories.tsv", sep="\t")
    assert set(traj["variant"]) == {"extragradient_l5", "extragradient_l10"}  # Fisher log skipped
    assert len(traj) == 6 * 2 * 2 * 2
    posthoc = traj[(traj["variant"] == "extragradient_l10") & (traj["forget_set"] == "structured")
                   & (traj["seed"] == 1)]["posthoc_auc"]
    assert (posthoc == 0.53).all()


def test_without_extragradient(tmp_path):
    summary = make_summary(variants=("baseline", "retrain", "frozen_single", "fisher"))
    index = build_report(summary, [], tmp_path / "report", CONFIG, PROVENANCE)
    page = index.read_text()
    assert page.count('<img src="data:image/png;base64,') == 5
    for stem in FIGURE_CAPTIONS:
        _check_png(index.parent / "figures" / f"{stem}.png")
    t2 = pd.read_csv(index.parent / "tables" / "table2_adversarial.tsv", sep="\t")
    assert list(t2["variant"]) == ["baseline", "frozen_single", "retrain"]
    t4 = pd.read_csv(index.parent / "tables" / "table4_utility.tsv", sep="\t")
    assert list(t4.columns) == ["metric", "baseline", "fisher", "retrain"]


def test_status_rule_edges():
    assert status(0.51, 0.45, 0.51, "extragradient") == "SUCCESS"  # edge is in band
    assert status(0.5101, 0.45, 0.51, "extragradient") == "FAIL"
    assert status(0.5101, 0.45, 0.51, "baseline") == "LEAK"
    assert status(0.4499, 0.45, 0.51, "fisher") == "OVER-UNLEARN"
    assert status(0.9, 0.45, 0.51, "retrain") == "TARGET"
    assert status(float("nan"), 0.45, 0.51, "fisher") == "NA"


def test_bad_summary_is_named(tmp_path):
    bad = make_summary().drop(columns=["band_low"])
    with pytest.raises(ScunlearnError, match="band_low"):
        build_report(bad, [], tmp_path, CONFIG, PROVENANCE)
    with pytest.raises(ScunlearnError, match="not in the summary"):
        table_adversarial(make_summary(), forget_set="nope")
    with pytest.raises(ScunlearnError, match="missing.tsv"):
        build_report(tmp_path / "missing.tsv", [], tmp_path, CONFIG, PROVENANCE)
