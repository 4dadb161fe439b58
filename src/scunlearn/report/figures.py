"""The report's figures: each saved as a PNG plus, beside it, the TSV of the data it plots.

Figures are drawn on ``matplotlib.figure.Figure`` objects (the Agg canvas, no pyplot
state), so the module works headless and in parallel jobs. Every figure shows the retrain
floor and its target band, and degrades to a readable placeholder when its data is missing.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .. import ScunlearnError
from ..io import read_tsv, write_tsv, write_with
from .tables import (aggregate, check_forget_set, forget_set_order, main_forget_set,
                     validate_summary, variant_order)

BAND_COLOR = "#2ca02c"
DPI = 150
SEED_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
TRAJECTORY_COLUMNS = ["variant", "method", "forget_set", "seed", "epoch", "shadow_auc", "posthoc_auc"]

#: Figure file stem -> (title, caption); used by the HTML page.
FIGURE_CAPTIONS = {
    "fig1_trajectories": (
        "Figure 1. Shadow-attacker AUC during unlearning",
        "One line per seed: the AUC of the shadow attacker (forget vs matched validation cells) that "
        "drives early stopping, per epoch. The star after the last epoch is the same seed's "
        "post-hoc audit AUC (forget vs matched negatives, fresh attacker). The shaded band is "
        "the retrain floor ± tolerance, the dashed line the floor."),
    "fig2_method_comparison": (
        "Figure 2. Method comparison",
        "Post-hoc MIA AUC of every variant on one forget set: one point per seed, the black bar "
        "is the mean over seeds. Shaded: target band (retrain floor ± tolerance); dashed: floor."),
    "fig3_summary": (
        "Figure 3. Summary by forget set",
        "Mean post-hoc AUC per variant (error bar: SD over seeds) for each forget set, with "
        "the status of the mean on the right. Shaded: target band; dashed: retrain floor."),
    "fig4_privacy_utility": (
        "Figure 4. Privacy-utility trade-off",
        "Each point is one model: post-hoc AUC (lower is more private, the floor is the goal) "
        "against latent cell-type classification accuracy (higher is more useful). Colour: "
        "variant; marker: forget set; horizontal lines: each forget set's retrain floor."),
    "fig5_seed_cis": (
        "Figure 5. Per-seed AUCs with bootstrap 95% CIs",
        "Every audited model's AUC with its bootstrap 95% confidence interval; markers "
        "distinguish seeds. With about 30 forget cells the interval is roughly ±0.1, "
        "wider than the band: compare intervals, not single digits."),
}


def _styled(fn: Callable) -> Callable:
    """Draw inside seaborn's whitegrid style without touching global rcParams."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            return fn(*args, **kwargs)
    return wrapper


def _save(fig: Figure, data: pd.DataFrame, out_dir: str | os.PathLike, stem: str) -> Path:
    """Write ``stem.png`` and ``stem.tsv`` (the plotted data) atomically; return the PNG path."""
    out = Path(out_dir)
    png = out / f"{stem}.png"
    write_with(png, lambda p: fig.savefig(p, format="png", dpi=DPI, bbox_inches="tight"))
    write_tsv(data, out / f"{stem}.tsv")
    return png


def _placeholder(ax, text: str) -> None:
    """Say why a panel is empty instead of drawing blank axes."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
            fontsize=11, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _band(ax, floor: float, low: float, high: float, vertical: bool = False) -> None:
    """Shade the target band (floor ± tolerance) and draw the retrain floor on ``ax``."""
    span, line = (ax.axvspan, ax.axvline) if vertical else (ax.axhspan, ax.axhline)
    span(low, high, color=BAND_COLOR, alpha=0.18, lw=0, zorder=0)
    line(floor, color=BAND_COLOR, ls="--", lw=1.3, zorder=1)


def _band_handles(tolerance: float | None = None) -> list:
    """Legend entries for :func:`_band`."""
    label = "target band" + (f" (floor ± {tolerance:.3g})" if tolerance is not None else "")
    return [
        Line2D([], [], color=BAND_COLOR, alpha=0.35, lw=8, label=label),
        Line2D([], [], color=BAND_COLOR, ls="--", lw=1.3, label="retrain floor"),
    ]


def _bands(summary: pd.DataFrame) -> pd.DataFrame:
    """Floor and band per forget set (indexed by forget set)."""
    return summary.groupby("forget_set", sort=False)[["floor", "band_low", "band_high"]].first()


def _tolerance(bands: pd.DataFrame) -> float | None:
    """The tolerance (band_high - floor) when it is the same for every forget set, else None."""
    tol = np.unique(np.round((bands["band_high"] - bands["floor"]).to_numpy(), 9))
    return float(tol[0]) if len(tol) == 1 and np.isfinite(tol[0]) else None


def variant_palette(summary: pd.DataFrame) -> dict[str, tuple]:
    """One fixed colour per variant, shared by all figures: grey baseline, black retrain."""
    order = variant_order(summary)
    methods = summary.drop_duplicates("variant").set_index("variant")["method"]
    others = [v for v in order if methods[v] not in ("baseline", "retrain")]
    colours = dict(zip(others, sns.color_palette("colorblind", max(len(others), 1))))
    fixed = {"baseline": (0.45, 0.45, 0.45), "retrain": (0.0, 0.0, 0.0)}
    return {v: fixed.get(methods[v], colours.get(v)) for v in order}


def _legend_outside(fig: Figure, handles: list) -> None:
    """Put one figure-level legend to the right of all axes (never over the data)."""
    fig.legend(handles=handles, loc="outside right center", frameon=False)


def read_trajectories(trajectories: Iterable[Mapping]) -> pd.DataFrame:
    """Stack the trajectory TSVs that log ``shadow_auc`` into one long table.

    Each item is a dict {variant, method, forget_set, seed, path}; files without a
    ``shadow_auc`` column (methods that log other things) are skipped.
    """
    frames = []
    for t in trajectories:
        path = Path(t["path"])
        df = read_tsv(path, "trajectory TSV")
        if "epoch" not in df.columns:
            raise ScunlearnError(f"{path}: trajectory has no 'epoch' column")
        if "shadow_auc" not in df.columns:
            continue
        frames.append(df[["epoch", "shadow_auc"]].dropna().assign(
            variant=str(t["variant"]), method=str(t["method"]),
            forget_set=str(t["forget_set"]), seed=int(t["seed"])))
    if not frames:
        return pd.DataFrame(columns=TRAJECTORY_COLUMNS[:-1])
    return pd.concat(frames, ignore_index=True)[TRAJECTORY_COLUMNS[:-1]]


def _audit_tick(ax, x_end: float, x_audit: float) -> None:
    """Integer epoch ticks up to ``x_end - 1``, a dotted divider, and an 'audit' tick."""
    gap = max(1.0, 0.1 * x_end)  # keep the last epoch label clear of "audit"
    ticks = [t for t in MaxNLocator(nbins=6, integer=True).tick_values(0, x_end - 1)
             if 0 <= t <= x_end - gap]
    ax.set_xticks(ticks + [x_audit], [f"{t:g}" for t in ticks] + ["audit"])
    ax.axvline(x_end - 0.5, color="0.6", ls=":", lw=1)


@_styled
def fig_trajectories(summary: pd.DataFrame, trajectories: Iterable[Mapping],
                     out_dir: str | os.PathLike) -> Path:
    """Fig. 1: shadow-AUC per epoch and seed, post-hoc AUC starred, one panel per variant x set."""
    stem = "fig1_trajectories"
    traj = read_trajectories(trajectories)
    posthoc = summary[["forget_set", "variant", "seed", "auc"]].rename(columns={"auc": "posthoc_auc"})
    data = traj.merge(posthoc, on=["forget_set", "variant", "seed"], how="left")[TRAJECTORY_COLUMNS]
    if data.empty:
        fig = Figure(figsize=(6, 3), layout="constrained")
        ax = fig.add_subplot()
        _placeholder(ax, "No shadow-AUC trajectories in this run\n(no extragradient variants).")
        ax.set_title(FIGURE_CAPTIONS[stem][0])
        return _save(fig, data, out_dir, stem)

    sets = [f for f in forget_set_order(summary) if f in set(data["forget_set"])]
    variants = [v for v in variant_order(summary) if v in set(data["variant"])]
    seeds = sorted(data["seed"].unique().tolist())
    colours = dict(zip(seeds, sns.color_palette("deep", len(seeds))))
    bands = _bands(summary)
    fig = Figure(figsize=(4.2 * len(variants) + 1.8, 3.2 * len(sets)), layout="constrained")
    axes = fig.subplots(len(sets), len(variants), sharey=True, squeeze=False)
    for (i, fs), (j, var) in ((a, b) for a in enumerate(sets) for b in enumerate(variants)):
        ax = axes[i, j]
        ax.set_title(f"{var} — {fs}")
        panel = data[(data["forget_set"] == fs) & (data["variant"] == var)]
        if panel.empty:
            _placeholder(ax, "no trajectory")
            continue
        _band(ax, *bands.loc[fs, ["floor", "band_low", "band_high"]])
        x_end = panel["epoch"].max() + 1
        step = max(0.2, 0.015 * x_end)  # spread the stars of close AUCs sideways
        x_audit = x_end + step * (len(seeds) - 1) / 2
        for seed, run in panel.groupby("seed"):
            ax.plot(run["epoch"], run["shadow_auc"], color=colours[seed], marker=".", lw=1.4)
            auc = run["posthoc_auc"].iloc[0]
            if pd.notna(auc):
                dx = (seeds.index(seed) - (len(seeds) - 1) / 2) * step
                ax.scatter([x_audit + dx], [auc], marker="*", s=160, color=colours[seed],
                           edgecolor="black", linewidth=0.6, zorder=5)
        _audit_tick(ax, x_end, x_audit)
        ax.set_xlabel("epoch")
        ax.set_ylabel("AUC" if j == 0 else "")
    handles = [Line2D([], [], color=colours[s], marker=".", label=f"seed {s}: shadow AUC")
               for s in seeds]
    handles.append(Line2D([], [], ls="", marker="*", ms=12, color="0.6", mec="black",
                          label="post-hoc audit AUC"))
    _legend_outside(fig, handles + _band_handles(_tolerance(bands)))
    fig.suptitle(FIGURE_CAPTIONS[stem][0])
    return _save(fig, data, out_dir, stem)


@_styled
def fig_method_comparison(summary: pd.DataFrame, out_dir: str | os.PathLike,
                          forget_set: str) -> Path:
    """Fig. 2: AUC per variant on one forget set, one point per seed plus the mean."""
    stem = "fig2_method_comparison"
    check_forget_set(summary, forget_set)
    cols = ["forget_set", "variant", "method", "seed", "auc", "floor", "band_low", "band_high"]
    data = summary.loc[summary["forget_set"] == forget_set, cols].reset_index(drop=True)
    order = [v for v in variant_order(summary) if v in set(data["variant"])]
    palette = variant_palette(summary)
    fig = Figure(figsize=(1.1 * len(order) + 3.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    _band(ax, *_bands(data).loc[forget_set, ["floor", "band_low", "band_high"]])
    sns.stripplot(data=data, x="variant", y="auc", hue="variant", order=order, hue_order=order,
                  palette=palette, size=7, jitter=0.12, legend=False, ax=ax, zorder=3,
                  edgecolor="black", linewidth=0.4)
    means = data.groupby("variant")["auc"].mean()
    ax.hlines([means[v] for v in order], np.arange(len(order)) - 0.3, np.arange(len(order)) + 0.3,
              color="black", lw=2.2, zorder=4)
    ax.set_xlabel("variant")
    ax.set_ylabel("post-hoc MIA AUC")
    ax.set_title(f"{FIGURE_CAPTIONS[stem][0]} ({forget_set} forget set)")
    if len(order) > 4:
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    handles = [Line2D([], [], ls="", marker="o", color="0.6", mec="black", label="one seed"),
               Line2D([], [], color="black", lw=2.2, label="mean over seeds")]
    _legend_outside(fig, handles + _band_handles(_tolerance(_bands(data))))
    return _save(fig, data, out_dir, stem)


def _variant_axis(ax, order: list[str]) -> None:
    """Categorical y axis of variants, first variant on top."""
    ax.set_yticks(range(len(order)), order)
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.set_ylabel("")


@_styled
def fig_summary(summary: pd.DataFrame, out_dir: str | os.PathLike) -> Path:
    """Fig. 3: mean AUC ± SD per variant, one panel per forget set, status of the mean shown."""
    stem = "fig3_summary"
    cols = ["forget_set", "variant", "method", "n_seeds", "auc_mean", "auc_sd", "floor",
            "band_low", "band_high", "status"]
    data = aggregate(summary)[cols]
    sets = forget_set_order(summary)
    order = variant_order(summary)
    palette = variant_palette(summary)
    fig = Figure(figsize=(7.5, (0.42 * len(order) + 1.0) * len(sets)), layout="constrained")
    axes = fig.subplots(len(sets), 1, sharex=True, squeeze=False)[:, 0]
    for ax, fs in zip(axes, sets):
        panel = data[data["forget_set"] == fs]
        _band(ax, *panel[["floor", "band_low", "band_high"]].iloc[0], vertical=True)
        for row in panel.itertuples(index=False):
            y = order.index(row.variant)
            ax.errorbar(row.auc_mean, y, xerr=0 if pd.isna(row.auc_sd) else row.auc_sd,
                        fmt="o", ms=8, color=palette[row.variant], mec="black", capsize=3)
            ax.text(1.02, y, row.status, transform=ax.get_yaxis_transform(), va="center",
                    fontsize=9)
        _variant_axis(ax, order)
        ax.set_title(f"{fs} forget set", loc="left")
    axes[-1].set_xlabel("mean post-hoc MIA AUC (± SD over seeds)")
    handles = [Line2D([], [], ls="", marker="o", color="0.6", mec="black",
                      label="mean ± SD")] + _band_handles(_tolerance(_bands(summary)))
    _legend_outside(fig, handles)
    fig.suptitle(FIGURE_CAPTIONS[stem][0])
    return _save(fig, data, out_dir, stem)


@_styled
def fig_privacy_utility(summary: pd.DataFrame, out_dir: str | os.PathLike) -> Path:
    """Fig. 4: AUC vs latent accuracy per model; colour = variant, marker = forget set."""
    stem = "fig4_privacy_utility"
    data = summary[["forget_set", "variant", "method", "seed", "auc", "latent_acc", "floor"]]
    data = data.reset_index(drop=True)
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(FIGURE_CAPTIONS[stem][0])
    plotted = data.dropna(subset=["auc", "latent_acc"])
    if plotted.empty:
        _placeholder(ax, "No latent accuracy in the summary.")
        return _save(fig, data, out_dir, stem)
    sets = forget_set_order(summary)
    styles = ["--", ":", "-.", (0, (5, 2, 1, 2))]
    for k, (fs, floor) in enumerate(_bands(summary)["floor"].items()):
        ax.axhline(floor, color=BAND_COLOR, ls=styles[k % len(styles)], lw=1.3,
                   label=f"floor ({fs})")
    order = [v for v in variant_order(summary) if v in set(plotted["variant"])]
    sns.scatterplot(data=plotted.rename(columns={"forget_set": "forget set"}), x="latent_acc",
                    y="auc", hue="variant", hue_order=order, palette=variant_palette(summary),
                    style="forget set", style_order=sets,
                    s=80, edgecolor="black", linewidth=0.4, ax=ax, zorder=3)
    handles, _ = ax.get_legend_handles_labels()
    ax.get_legend().remove()
    _legend_outside(fig, handles)
    ax.set_xlabel("latent cell-type accuracy (utility, higher is better)")
    ax.set_ylabel("post-hoc MIA AUC (privacy, floor is the goal)")
    return _save(fig, data, out_dir, stem)


@_styled
def fig_seed_cis(summary: pd.DataFrame, out_dir: str | os.PathLike) -> Path:
    """Fig. 5: every model's AUC with its bootstrap 95% CI, one panel per forget set."""
    stem = "fig5_seed_cis"
    cols = ["forget_set", "variant", "method", "seed", "auc", "auc_ci_low", "auc_ci_high",
            "floor", "band_low", "band_high", "verdict", "ci_overlaps_floor_range"]
    data = summary[cols].reset_index(drop=True)
    sets = forget_set_order(summary)
    order = variant_order(summary)
    seeds = sorted(data["seed"].unique())
    markers = {s: SEED_MARKERS[i % len(SEED_MARKERS)] for i, s in enumerate(seeds)}
    offsets = dict(zip(seeds, np.linspace(-0.3, 0.3, len(seeds)) if len(seeds) > 1 else [0.0]))
    palette = variant_palette(summary)
    height = max(3.0, 0.22 * len(order) * len(seeds) + 1.2)
    fig = Figure(figsize=(4.2 * len(sets) + 1.8, height), layout="constrained")
    axes = fig.subplots(1, len(sets), sharex=True, sharey=True, squeeze=False)[0]
    for ax, fs in zip(axes, sets):
        panel = data[data["forget_set"] == fs]
        _band(ax, *panel[["floor", "band_low", "band_high"]].iloc[0], vertical=True)
        for row in panel.itertuples(index=False):
            err = np.clip([[row.auc - row.auc_ci_low], [row.auc_ci_high - row.auc]], 0, None)
            ax.errorbar(row.auc, order.index(row.variant) + offsets[row.seed],
                        xerr=None if np.isnan(err).any() else err, fmt=markers[row.seed], ms=6,
                        color=palette[row.variant], mec="black", mew=0.4, capsize=2, lw=1.2)
        _variant_axis(ax, order)
        ax.set_title(f"{fs} forget set")
        ax.set_xlabel("post-hoc MIA AUC (95% bootstrap CI)")
    handles = [Line2D([], [], ls="", marker=markers[s], color="0.5", mec="black",
                      label=f"seed {s}") for s in seeds]
    _legend_outside(fig, handles + _band_handles(_tolerance(_bands(summary))))
    fig.suptitle(FIGURE_CAPTIONS[stem][0])
    return _save(fig, data, out_dir, stem)


def make_figures(summary: pd.DataFrame, trajectories: Iterable[Mapping],
                 out_dir: str | os.PathLike, forget_set: str | None = None) -> dict[str, Path]:
    """Draw all five figures into ``out_dir``; returns {stem: png path} in figure order.

    ``forget_set`` picks Fig. 2's set (default: structured if present, else the first).
    """
    summary = validate_summary(summary)
    fs = main_forget_set(summary, forget_set)
    paths = [
        fig_trajectories(summary, trajectories, out_dir),
        fig_method_comparison(summary, out_dir, fs),
        fig_summary(summary, out_dir),
        fig_privacy_utility(summary, out_dir),
        fig_seed_cis(summary, out_dir),
    ]
    return {p.stem: p for p in paths}
