"""Titles and captions of the report's figures and tables: the one place they are written.

The HTML page reads them from here, and the Snakemake report's caption files
(``workflow/report/<stem>.rst``) are generated from here, so the two cannot drift::

    python -m scunlearn.report workflow/report

(``tests/report/test_report.py`` fails when a committed ``.rst`` differs from what this writes.)
The order of :data:`FIGURES` and :data:`TABLES` is the order of the page and of the
report rule's outputs. Captions are plain text: no RST markup beyond the bold title.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Figure file stem -> (title, caption), in page order.
FIGURES: dict[str, tuple[str, str]] = {
    "fig1_per_cell_audit": (
        "Figure 1. Per-cell audit: method comparison",
        "Left: the per-cell reference-calibrated attack's AUC (forget cells vs matched "
        "negatives; 0.5 = the attack cannot tell them apart) of every variant, one point per "
        "seed and a bar at the mean over seeds; the grey span is the range of the retrained "
        "models' AUCs on the same cells, the dotted line chance (0.5). Right: every model's "
        "difference from the retrained models (Δ vs retrain, in the audit's measure: by default "
        "the forget cells' mean calibrated score above every audit cell's, in per-cell reference "
        "SDs) with its 95% CI from the retrained models' own spread; the shaded span is the "
        "equivalence margin. Colour: the model's verdict. "
        "SUCCESS needs the whole CI inside the margin and the study's controls passed."),
    "fig2_trajectories": (
        "Figure 2. Unlearning trajectories",
        "Per seed and epoch, what each method logged while unlearning (epoch 0 = the starting "
        "baseline). Top rows, where logged: the AUC of the method's own shadow attacker "
        "(forget vs matched validation cells) with the paper's band shaded, and each seed's "
        "post-hoc audit AUC (the paper's MLP attack) as a star at 'audit'. Bottom rows, where "
        "logged: the forget loss, the mean per-gene negative ELBO of the forget cells (solid), "
        "against the matched validation cells' (dotted); forgetting shows as the forget loss "
        "rising towards the validation loss. The open circle is the model the method kept."),
    "fig3_mlp_method_comparison": (
        "Figure 3. The paper's MLP attack: method comparison",
        "The paper's attack (an MLP on the model's per-cell features, out-of-fold AUC, forget "
        "cells vs matched negatives) of every variant on one forget set: one point per seed, "
        "the black bar is the mean over seeds. Shaded: the paper's target band (retrain floor "
        "± tolerance); dashed: the floor. Judged by the paper's rule, not the per-cell audit."),
    "fig4_mlp_summary": (
        "Figure 4. The paper's MLP attack: summary by forget set",
        "Mean MLP-attack AUC per variant (error bar: SD over seeds) for each forget set, with "
        "the paper's rule applied to the mean on the right. Shaded: the paper's target band; "
        "dashed: retrain floor."),
    "fig5_privacy_utility": (
        "Figure 5. Privacy-utility trade-off",
        "Each point is one model: the per-cell audit's AUC (lower is more private; the "
        "retrained models' value is the goal) against latent cell-type classification "
        "accuracy (higher is more useful). Colour: variant; marker: forget set; horizontal "
        "lines: each forget set's mean per-cell AUC of the retrained models."),
    "fig6_mlp_seed_cis": (
        "Figure 6. The paper's MLP attack: per-seed AUCs with bootstrap 95% CIs",
        "Every audited model's MLP-attack AUC with its bootstrap 95% confidence interval; "
        "markers distinguish seeds. With about 30 forget cells the interval is roughly "
        "±0.1, wider than the paper's band: compare intervals, not single digits."),
    "fig7_frontier": (
        "Figure 7. The privacy–cost frontier: Δ vs retrain against cost",
        "Per forget set, each method variant's Δ against the retrained models as a fraction of the baseline's "
        "lead (0 = as retrain, 1 = as the baseline; bars: 95% CI over its models) against its cost relative to a "
        "retrain in cell passes with gradient, which no machine changes (wall time is in frontier.tsv; the critics' "
        "and attackers' own networks are not counted). A line joins the budgets of one ladder; "
        "the fine-tuning control's is dashed: a method earns a claim only below it at equal cost. Marker colour: "
        "the variant's verdict. Grey band: the retrained models' spread (±1 SD); dotted: the equivalence margin."),
}

#: Table file stem -> (title, caption), in page order; ``{forget_set}`` is filled in.
TABLES: dict[str, tuple[str, str]] = {
    "audit_power": (
        "Audit power on this study",
        "Per forget set: in how many seeds the per-cell audit caught the un-unlearned baseline "
        "(significantly above retrain; the positive control), how many retrained models it "
        "flagged (false alarms; the negative control), whether the controls passed, the "
        "baseline's mean Δ vs retrain, the smallest Δ this study detects with 80% power, and "
        "the number of reference models. When a control fails nothing is called SUCCESS."),
    "method_comparison": (
        "Method comparison (per-cell audit)",
        "Per forget set and variant, over seeds: per-cell AUC (mean, and mean of the per-seed "
        "95% CIs), Δ vs retrain (mean, mean per-seed CI, range of per-seed p), Δ vs the "
        "fine-tuning control (mean, mean per-seed CI; 'better than fine-tuning' only when that "
        "CI lies below 0), the share of the baseline's excess forget-cell score removed "
        "(1 = as retrain, 0 = as baseline), the verdicts of the seeds, utility (latent "
        "accuracy, reconstruction MSE, validation ELBO) and wall time relative to retraining: of one "
        "unlearning request (cost), and of a method's up-front job done once per seed before any "
        "request (setup cost: sisa's shard training; — for methods without one)."),
    "table2_adversarial": (
        "Table II. Adversarial unlearning on the {forget_set} forget set (the paper's rule)",
        "The paper's Table II: baseline, each variant of the paper's adversarial methods "
        "(frozen_critic, extragradient) and retrain on one forget set (every other method is in "
        "the method comparison). MLP-attack AUC (mean and SD over seeds), gap to the retrain floor, the paper's "
        "rule applied to the mean (paper status) and the fraction of seeds it calls SUCCESS; "
        "beside them the per-cell audit's mean AUC and the seeds' verdicts."),
    "table3_fisher": (
        "Table III. Fisher scrubbing by forget set (the paper's rule)",
        "The paper's Table III: per forget set, mean and SD over seeds of the MLP-attack AUC "
        "of Fisher variants, the floor and band, gap to floor, paper status of the mean and "
        "paper success rate; beside them the per-cell audit's mean AUC and verdicts."),
    "table4_utility": (
        "Table IV. Utility and cost (means over models, forget sets pooled)",
        "The paper's Table IV: reconstruction MSE, marker-gene MSE, latent cell-type "
        "accuracy, validation ELBO, wall time, peak memory and wall time relative to "
        "retraining of the baseline, extragradient and Fisher variants and retraining. Means "
        "over all models of a group, forget sets pooled."),
    "table_all": (
        "Every variant × forget set: both attacks, utility and cost",
        "Every variant and forget set: the per-cell audit (mean AUC, Δ vs retrain, verdicts) "
        "next to the paper's MLP attack (mean AUC and SD, mean bootstrap CI, floor and band, "
        "paper status and paper success rate), TPR at 1% FPR, LOSS-attack AUC, utility, mean "
        "wall time and its ratio to retraining."),
}

#: Caption of the page itself in the Snakemake report.
INDEX = ("The self-contained HTML report of this run: the audit's power on this study, the "
         "method comparison of the per-cell audit, how to read the verdicts, the paper's tables "
         "(rounded to 3 decimals) under the paper's rule, all figures (embedded), the run's "
         "config, package versions and data checksums.")


def rst(stem: str) -> str:
    """The Snakemake caption (.rst text) of one figure or table, or of ``index``."""
    if stem == "index":
        return INDEX + "\n"
    title, caption = FIGURES.get(stem) or TABLES[stem]
    title = title.replace("{forget_set}", "main")
    kind = "figure" if stem in FIGURES else "table"
    return f"**{title}.** {caption} The {kind}'s data: {stem}.tsv.\n"


def stems() -> list[str]:
    """Every stem with a generated caption file: the page, the tables, the figures."""
    return ["index", *TABLES, *FIGURES]


def write_rst(out_dir: str | os.PathLike) -> list[Path]:
    """Write ``<stem>.rst`` for every stem into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem in stems():
        path = out / f"{stem}.rst"
        path.write_text(rst(stem), encoding="utf-8")
        paths.append(path)
    return paths

