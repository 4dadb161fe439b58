"""The report's figures: each saved as a PNG plus, beside it, the TSV of the data it plots.

Figures are drawn on ``matplotlib.figure.Figure`` objects (the Agg canvas, no pyplot
state), so the module works headless and in parallel jobs. Every figure shows what the
retrained models score (their range for the per-cell audit, the paper's floor and band for
the paper's MLP attack), and degrades to a readable placeholder when its data is missing.
Titles and captions come from :mod:`.captions`.
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

from scunlearn import ScunlearnError
from scunlearn.io import read_tsv, write_tsv, write_with
from scunlearn.report.captions import FIGURES
from scunlearn.report.tables import (
    aggregate,
    check_forget_set,
    forget_set_order,
    main_forget_set,
    validate_summary,
    variant_order,
)

BAND_COLOR = "#2ca02c"
RETRAIN_COLOR = "0.55"
DPI = 150
SEED_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
#: Verdict -> colour in the per-cell figure (the same hues as the HTML table cells; NOT-COMPARABLE, grey in
#: the tables as INCONCLUSIVE, gets its own). Figure 1 colours only by verdict, so no variant looks SUCCESS-green.
VERDICT_COLORS = {"SUCCESS": "#2e8b3a", "FAIL": "#c0392b", "LEAK": "#7b1010", "OVER-UNLEARN": "#e08a00",
                  "TARGET": "#2c6fb3", "INCONCLUSIVE": "#7f7f7f", "NOT-COMPARABLE": "#8e6bb0"}
#: Per-epoch columns of a trajectory TSV that Figure 2 plots (others, e.g. grad_share_*, are ignored).
TRAJECTORY_METRICS = ("shadow_auc", "forget_loss", "val_loss")
#: Columns of Figure 2's data (long format: one row per logged value).
TRAJECTORY_COLUMNS = ["variant", "method", "forget_set", "seed", "row", "epoch", "phase", "metric", "value",
                      "posthoc_auc"]
#: Figure file stem -> (title, caption), from :mod:`.captions` (the one place they are written).
FIGURE_CAPTIONS = FIGURES


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
    # hide this panel's ticks only: set_xticks([]) would clear the ticks of axes it shares
    ax.tick_params(left=False, labelleft=False, bottom=False, labelbottom=False)
    ax.grid(False)


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
    # the colour-blind palette has 10 colours and then repeats them: beyond 10 variants, tab20's 20
    palette = "colorblind" if len(others) <= 10 else ("tab20" if len(others) <= 20 else "husl")
    colours = dict(zip(others, sns.color_palette(palette, max(len(others), 1))))
    fixed = {"baseline": (0.45, 0.45, 0.45), "retrain": (0.0, 0.0, 0.0)}
    return {v: fixed.get(methods[v], colours.get(v)) for v in order}


def _legend_outside(fig: Figure, handles: list) -> None:
    """Put one figure-level legend to the right of all axes (never over the data)."""
    fig.legend(handles=handles, loc="outside right center", frameon=False)


def read_trajectories(trajectories: Iterable[Mapping]) -> pd.DataFrame:
    """Stack the methods' trajectory TSVs into one long table of the values Figure 2 plots.

    Each item is a dict {variant, method, forget_set, seed, path}. A TSV needs an ``epoch``
    column; of its other columns only :data:`TRAJECTORY_METRICS` are kept (methods log
    more, e.g. ``step``, ``grad_share_*``, ``loss_gap``, and add columns over time), and a
    file with none of them is skipped. ``row`` keeps the file's order (several rows can
    share an epoch: the epoch-0 baseline, Fisher's scrub steps, the ``final`` kept model);
    ``phase`` is the file's ``phase`` column, or "" when it has none.
    """
    frames = []
    for t in trajectories:
        path = Path(t["path"])
        df = read_tsv(path, "trajectory TSV")
        if "epoch" not in df.columns:
            raise ScunlearnError(f"{path}: trajectory has no 'epoch' column")
        metrics = [m for m in TRAJECTORY_METRICS if m in df.columns]
        if not metrics:
            continue
        df = df.assign(row=np.arange(len(df)),
                       phase=df["phase"].fillna("").astype(str) if "phase" in df.columns else "")
        long = df.melt(id_vars=["row", "epoch", "phase"], value_vars=metrics, var_name="metric",
                       value_name="value").dropna(subset=["value", "epoch"])
        frames.append(long.assign(variant=str(t["variant"]), method=str(t["method"]),
                                  forget_set=str(t["forget_set"]), seed=int(t["seed"])))
    if not frames:
        return pd.DataFrame(columns=TRAJECTORY_COLUMNS[:-1])
    out = pd.concat(frames, ignore_index=True)[TRAJECTORY_COLUMNS[:-1]]
    return out.sort_values(["forget_set", "variant", "seed", "metric", "row"], kind="stable").reset_index(drop=True)


def _audit_tick(ax, x_end: float, x_audit: float) -> None:
    """Integer epoch ticks up to ``x_end - 1``, a dotted divider, and an 'audit' tick."""
    gap = max(1.0, 0.1 * x_end)  # keep the last epoch label clear of "audit"
    ticks = [t for t in MaxNLocator(nbins=6, integer=True).tick_values(0, x_end - 1)
             if 0 <= t <= x_end - gap]
    ax.set_xticks(ticks + [x_audit], [f"{t:g}" for t in ticks] + ["audit"])
    ax.axvline(x_end - 0.5, color="0.6", ls=":", lw=1)


def _shadow_panel(ax, panel: pd.DataFrame, band: pd.Series, colours: dict, seeds: list) -> None:
    """Shadow AUC per epoch and seed, the paper's band, and each seed's post-hoc MLP AUC starred."""
    _band(ax, *band[["floor", "band_low", "band_high"]])
    x_end = panel["epoch"].max() + 1
    step = max(0.2, 0.015 * x_end)  # spread the stars of close AUCs sideways
    x_audit = x_end + step * (len(seeds) - 1) / 2
    for seed, run in panel.groupby("seed"):
        ax.plot(run["epoch"], run["value"], color=colours[seed], marker=".", lw=1.4)
        auc = run["posthoc_auc"].iloc[0]
        if pd.notna(auc):
            dx = (seeds.index(seed) - (len(seeds) - 1) / 2) * step
            ax.scatter([x_audit + dx], [auc], marker="*", s=160, color=colours[seed],
                       edgecolor="black", linewidth=0.6, zorder=5)
    _audit_tick(ax, x_end, x_audit)


def _loss_panel(ax, panel: pd.DataFrame, colours: dict) -> None:
    """Forget loss (solid) and matched validation loss (dotted) per seed, in logged order;
    the ``final`` row (the model the method kept) as an open circle."""
    for (seed, metric), run in panel.groupby(["seed", "metric"]):
        final = run["phase"] == "final"
        solid = metric == "forget_loss"
        ax.plot(run.loc[~final, "epoch"], run.loc[~final, "value"], color=colours[seed],
                ls="-" if solid else ":", lw=1.4 if solid else 1.1, marker="." if solid else None)
        if solid and final.any():
            ax.scatter(run.loc[final, "epoch"], run.loc[final, "value"], s=70, facecolor="none",
                       edgecolor=colours[seed], linewidth=1.4, zorder=5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))


#: Figure 2's panel rows per forget set: (metric shown, y-axis label).
_TRAJ_ROWS = {"shadow_auc": "shadow AUC", "forget_loss": "loss (−ELBO)"}


@_styled
def fig_trajectories(summary: pd.DataFrame, trajectories: Iterable[Mapping],
                     out_dir: str | os.PathLike) -> Path:
    """Fig. 2: per epoch and seed, the shadow AUC and the forget loss each method logged.

    One column per variant with a trajectory, per forget set one row for the shadow AUC
    and one for the forget loss, each only where some variant logged it; a panel whose
    variant did not log that value says so. Trajectories with new columns work: only
    :data:`TRAJECTORY_METRICS` are read.
    """
    stem = "fig2_trajectories"
    traj = read_trajectories(trajectories)
    posthoc = summary[["forget_set", "variant", "seed", "auc"]].rename(columns={"auc": "posthoc_auc"})
    data = traj.merge(posthoc, on=["forget_set", "variant", "seed"], how="left")[TRAJECTORY_COLUMNS]
    if data.empty:
        fig = Figure(figsize=(6, 3), layout="constrained")
        ax = fig.add_subplot()
        _placeholder(ax, "No trajectories with a shadow AUC or forget loss in this run.")
        ax.set_title(FIGURE_CAPTIONS[stem][0])
        return _save(fig, data, out_dir, stem)

    sets = [f for f in forget_set_order(summary) if f in set(data["forget_set"])]
    variants = [v for v in variant_order(summary) if v in set(data["variant"])]
    rows = [(fs, kind) for fs in sets for kind in _TRAJ_ROWS
            if ((data["forget_set"] == fs) & (data["metric"] == kind)).any()]
    seeds = sorted(data["seed"].unique().tolist())
    colours = dict(zip(seeds, sns.color_palette("deep", len(seeds))))
    bands = _bands(summary)
    fig = Figure(figsize=(4.2 * len(variants) + 2.2, 3.0 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(variants), sharey="row", squeeze=False)
    for i, (fs, kind) in enumerate(rows):
        for j, var in enumerate(variants):
            ax = axes[i, j]
            ax.set_title(f"{var} — {fs}", fontsize=10)
            sel = (data["forget_set"] == fs) & (data["variant"] == var)
            metrics = ["forget_loss", "val_loss"] if kind == "forget_loss" else [kind]
            panel = data[sel & data["metric"].isin(metrics)]
            if panel.empty:
                _placeholder(ax, f"{_TRAJ_ROWS[kind]} not logged" if sel.any() else "no trajectory")
                continue
            if kind == "shadow_auc":
                _shadow_panel(ax, panel, bands.loc[fs], colours, seeds)
            else:
                _loss_panel(ax, panel, colours)
            ax.set_xlabel("epoch")
            ax.set_ylabel(_TRAJ_ROWS[kind] if j == 0 else "")
    handles = [Line2D([], [], color=colours[s], marker=".", label=f"seed {s}") for s in seeds]
    kinds = {k for _, k in rows}
    if "shadow_auc" in kinds:
        handles.append(Line2D([], [], ls="", marker="*", ms=12, color="0.6", mec="black",
                              label="post-hoc MLP-attack AUC"))
        handles += _band_handles(_tolerance(bands))
    if "forget_loss" in kinds:
        handles += [Line2D([], [], color="0.3", lw=1.4, label="forget loss"),
                    Line2D([], [], color="0.3", ls=":", lw=1.1, label="matched validation loss"),
                    Line2D([], [], ls="", marker="o", mfc="none", mec="0.3", label="kept model")]
    _legend_outside(fig, handles)
    fig.suptitle(FIGURE_CAPTIONS[stem][0])
    return _save(fig, data, out_dir, stem)


#: Columns of Figure 1's data.
PER_CELL_COLUMNS = ["forget_set", "variant", "method", "seed", "pc_auc", "pc_auc_ci_low", "pc_auc_ci_high",
                    "delta_vs_retrain", "delta_ci_low", "delta_ci_high", "p_vs_retrain", "verdict",
                    "retrain_pc_auc_min", "retrain_pc_auc_max"]


@_styled
def fig_per_cell_audit(summary: pd.DataFrame, out_dir: str | os.PathLike,
                       margin: float | None = None) -> Path:
    """Fig. 1 (main): per forget set, the per-cell AUC of every variant (seed points, mean bar,
    retrain's range) and a forest plot of every model's Δ vs retrain with its 95% CI.

    ``margin``: the equivalence margin (config ``audit.equivalence_margin``), shaded around 0
    in the forest plot when given. Points in both panels are coloured by their model's verdict
    (:data:`VERDICT_COLORS`, every verdict present in the legend); the variants are the rows.
    """
    stem = "fig1_per_cell_audit"
    data = summary[PER_CELL_COLUMNS[:-2]].reset_index(drop=True)
    ret = summary[summary["method"] == "retrain"].groupby("forget_set")["pc_auc"]
    data["retrain_pc_auc_min"] = data["forget_set"].map(ret.min())
    data["retrain_pc_auc_max"] = data["forget_set"].map(ret.max())
    sets = forget_set_order(summary)
    seeds = sorted(data["seed"].unique())
    offsets = dict(zip(seeds, np.linspace(-0.25, 0.25, len(seeds)) if len(seeds) > 1 else [0.0]))
    n_rows = [data.loc[data["forget_set"] == fs, "variant"].nunique() for fs in sets]
    fig = Figure(figsize=(12, sum(0.45 * n + 1.1 for n in n_rows)), layout="constrained")
    axes = fig.subplots(len(sets), 2, sharey="row", squeeze=False,
                        gridspec_kw={"height_ratios": [n + 2 for n in n_rows]})
    for (ax_auc, ax_d), fs in zip(axes, sets):
        panel = data[data["forget_set"] == fs]
        order = [v for v in variant_order(summary) if v in set(panel["variant"])]
        lo, hi = panel["retrain_pc_auc_min"].iloc[0], panel["retrain_pc_auc_max"].iloc[0]
        if pd.notna(lo) and hi > lo:
            ax_auc.axvspan(lo, hi, color=RETRAIN_COLOR, alpha=0.3, lw=0, zorder=0)
        elif pd.notna(lo):  # one retrained model: its value
            ax_auc.axvline(lo, color=RETRAIN_COLOR, lw=3, alpha=0.6, zorder=0)
        ax_auc.axvline(0.5, color="0.4", ls=":", lw=1)
        for row in panel.itertuples(index=False):
            ax_auc.scatter(row.pc_auc, order.index(row.variant) + offsets[row.seed], s=36,
                           color=VERDICT_COLORS.get(row.verdict, "0.5"), edgecolor="black", linewidth=0.4, zorder=3)
        means = panel.groupby("variant")["pc_auc"].mean()
        for var, m in means.items():
            y = order.index(var)
            ax_auc.vlines(m, y - 0.35, y + 0.35, color="black", lw=2.2, zorder=4)
        _variant_axis(ax_auc, order)
        ax_auc.set_title(f"{fs} forget set: per-cell AUC", loc="left", fontsize=10)
        ax_auc.set_xlabel("per-cell attack AUC\n(forget cells vs matched negatives)")

        if margin is not None and np.isfinite(margin):
            ax_d.axvspan(-margin, margin, color=BAND_COLOR, alpha=0.18, lw=0, zorder=0)
        ax_d.axvline(0, color="black", lw=1)
        for row in panel.itertuples(index=False):
            y = order.index(row.variant) + offsets[row.seed]
            err = np.clip([[row.delta_vs_retrain - row.delta_ci_low],
                           [row.delta_ci_high - row.delta_vs_retrain]], 0, None)
            ax_d.errorbar(row.delta_vs_retrain, y, xerr=None if np.isnan(err).any() else err, fmt="o",
                          ms=6, color=VERDICT_COLORS.get(row.verdict, "0.5"), mec="black", mew=0.4,
                          capsize=2, lw=1.3)
        # Δ is in the audit's measure (the score shift, unbounded; or the AUC): the axis spans the data
        span = panel[["delta_ci_low", "delta_ci_high", "delta_vs_retrain"]].to_numpy(dtype=float)
        if np.isfinite(span).any():
            lo_d, hi_d = np.nanmin(span), np.nanmax(span)
            pad = 0.05 * max(hi_d - lo_d, 0.1)
            ax_d.set_xlim(min(lo_d, -(margin or 0)) - pad, max(hi_d, margin or 0) + pad)
        ax_d.set_title(f"{fs}: Δ vs retrain (95% CI)", loc="left", fontsize=10)
        ax_d.set_xlabel("Δ vs retrained models\n(score shift in per-cell SDs; 0 = as retrain)")
    handles = [Line2D([], [], ls="", marker="o", color="0.6", mec="black", label="one seed (colour: its verdict)"),
               Line2D([], [], color="black", lw=2.2, label="mean over seeds"),
               Line2D([], [], color=RETRAIN_COLOR, alpha=0.5, lw=8, label="retrained models' range"),
               Line2D([], [], color="0.4", ls=":", label="chance (0.5)")]
    if margin is not None and np.isfinite(margin):
        handles.append(Line2D([], [], color=BAND_COLOR, alpha=0.35, lw=8, label=f"equivalence margin ±{margin:g}"))
    present = [v for v in VERDICT_COLORS if v in set(data["verdict"])]
    handles += [Line2D([], [], ls="", marker="o", color=VERDICT_COLORS[v], mec="black", label=v) for v in present]
    _legend_outside(fig, handles)
    fig.suptitle(FIGURE_CAPTIONS[stem][0])
    return _save(fig, data, out_dir, stem)


@_styled
def fig_method_comparison(summary: pd.DataFrame, out_dir: str | os.PathLike,
                          forget_set: str) -> Path:
    """Fig. 3: the paper's MLP-attack AUC per variant on one forget set, one point per seed plus the mean."""
    stem = "fig3_mlp_method_comparison"
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
    ax.set_ylabel("MLP-attack AUC (paper's attack)")
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
    """Fig. 4: mean MLP-attack AUC ± SD per variant, one panel per forget set, the paper's rule on the mean shown."""
    stem = "fig4_mlp_summary"
    cols = ["forget_set", "variant", "method", "n_seeds", "auc_mean", "auc_sd", "floor",
            "band_low", "band_high", "paper_status"]
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
            ax.text(1.02, y, row.paper_status, transform=ax.get_yaxis_transform(), va="center",
                    fontsize=9)
        _variant_axis(ax, order)
        ax.set_title(f"{fs} forget set", loc="left")
    axes[-1].set_xlabel("mean MLP-attack AUC (± SD over seeds)")
    handles = [Line2D([], [], ls="", marker="o", color="0.6", mec="black",
                      label="mean ± SD")] + _band_handles(_tolerance(_bands(summary)))
    _legend_outside(fig, handles)
    fig.suptitle(FIGURE_CAPTIONS[stem][0])
    return _save(fig, data, out_dir, stem)


@_styled
def fig_privacy_utility(summary: pd.DataFrame, out_dir: str | os.PathLike) -> Path:
    """Fig. 5: per-cell audit AUC vs latent accuracy per model; colour = variant, marker = forget set.

    Horizontal lines: each forget set's mean per-cell AUC of the retrained models (the goal).
    """
    stem = "fig5_privacy_utility"
    data = summary[["forget_set", "variant", "method", "seed", "pc_auc", "latent_acc"]].reset_index(drop=True)
    retrain = summary[summary["method"] == "retrain"].groupby("forget_set", sort=False)["pc_auc"].mean()
    data["retrain_pc_auc_mean"] = data["forget_set"].map(retrain)
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(FIGURE_CAPTIONS[stem][0])
    plotted = data.dropna(subset=["pc_auc", "latent_acc"])
    if plotted.empty:
        _placeholder(ax, "No latent accuracy in the summary.")
        return _save(fig, data, out_dir, stem)
    sets = forget_set_order(summary)
    styles = ["--", ":", "-.", (0, (5, 2, 1, 2))]
    for k, (fs, goal) in enumerate(retrain.items()):
        ax.axhline(goal, color=BAND_COLOR, ls=styles[k % len(styles)], lw=1.3, label=f"retrain ({fs})")
    order = [v for v in variant_order(summary) if v in set(plotted["variant"])]
    sns.scatterplot(data=plotted.rename(columns={"forget_set": "forget set"}), x="latent_acc",
                    y="pc_auc", hue="variant", hue_order=order, palette=variant_palette(summary),
                    style="forget set", style_order=sets,
                    s=80, edgecolor="black", linewidth=0.4, ax=ax, zorder=3)
    handles, _ = ax.get_legend_handles_labels()
    ax.get_legend().remove()
    _legend_outside(fig, handles)
    ax.set_xlabel("latent cell-type accuracy (utility, higher is better)")
    ax.set_ylabel("per-cell audit AUC (privacy; retrain is the goal)")
    return _save(fig, data, out_dir, stem)


@_styled
def fig_seed_cis(summary: pd.DataFrame, out_dir: str | os.PathLike) -> Path:
    """Fig. 6: every model's MLP-attack AUC with its bootstrap 95% CI, one panel per forget set."""
    stem = "fig6_mlp_seed_cis"
    cols = ["forget_set", "variant", "method", "seed", "auc", "auc_ci_low", "auc_ci_high",
            "floor", "band_low", "band_high", "paper_verdict", "ci_overlaps_floor_range"]
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
        ax.set_xlabel("MLP-attack AUC (95% bootstrap CI)")
    handles = [Line2D([], [], ls="", marker=markers[s], color="0.5", mec="black",
                      label=f"seed {s}") for s in seeds]
    _legend_outside(fig, handles + _band_handles(_tolerance(_bands(summary))))
    fig.suptitle(FIGURE_CAPTIONS[stem][0])
    return _save(fig, data, out_dir, stem)


@_styled
def fig_frontier(front: pd.DataFrame | None, out_dir: str | os.PathLike) -> Path:
    """Fig. 7: per forget set, every method variant's Δ against retrain (as a fraction of the baseline's lead,
    95% CI) against its cost relative to a retrain (log scale); a line through each budget ladder, markers by
    verdict, the retrained models' spread (±1 SD) and the equivalence margin as bands. Fine-tuning's ladder,
    the control, is drawn dashed: a method earns a claim only where it is below it at equal cost."""
    from scunlearn.audit.frontier import FRONTIER_COLUMNS, cost_of

    stem = "fig7_frontier"
    data = (front if front is not None else pd.DataFrame(columns=FRONTIER_COLUMNS)).reset_index(drop=True)
    data["cost"] = cost_of(data) if len(data) else pd.Series(dtype=float)
    sets = list(dict.fromkeys(data["forget_set"]))
    fig = Figure(figsize=(6.5 * max(len(sets), 1) + 2.5, 5), layout="constrained")
    axes = fig.subplots(1, max(len(sets), 1), squeeze=False)[0]
    if not sets or data["cost"].notna().sum() == 0:
        _placeholder(axes[0], "no method variant with a measured cost")
        return _save(fig, data, out_dir, stem)
    lines = sorted(dict.fromkeys(data["line"]))
    palette = dict(zip(lines, sns.color_palette("tab20", len(lines))))
    for ax, fs in zip(axes, sets):
        panel = data[(data["forget_set"] == fs) & data["cost"].notna()]
        sd, m = panel["null_sd_of_gap"].dropna(), panel["margin_of_gap"].dropna()
        if len(sd):
            ax.axhspan(-sd.iloc[0], sd.iloc[0], color=RETRAIN_COLOR, alpha=0.25, lw=0, zorder=0)
        if len(m):
            ax.axhline(m.iloc[0], color=BAND_COLOR, ls=":", lw=1.2)
            ax.axhline(-m.iloc[0], color=BAND_COLOR, ls=":", lw=1.2)
        ax.axhline(0, color="black", lw=1)
        ax.axhline(1, color="#7b1010", lw=0.8, ls="--")
        ax.axvline(1, color="0.4", lw=0.8, ls=":")
        for line, g in panel.groupby("line", sort=True):
            g = g.sort_values("cost")
            control = bool(g["is_control"].any())
            ax.plot(g["cost"], g["delta_of_gap"], color=palette[line], lw=2.2 if control else 1.2,
                    ls="--" if control else "-", zorder=2, label=line)
            err = np.clip(np.vstack([g["delta_of_gap"] - g["ci_low"], g["ci_high"] - g["delta_of_gap"]]), 0, None)
            ax.errorbar(g["cost"], g["delta_of_gap"], yerr=None if np.isnan(err).any() else err, fmt="none",
                        ecolor=palette[line], lw=0.9, capsize=2, zorder=2)
            ax.scatter(g["cost"], g["delta_of_gap"], s=46, zorder=3, edgecolor=palette[line], linewidth=1.4,
                       color=[VERDICT_COLORS.get(v, "0.5") for v in g["verdict"]])
        ax.set_xscale("log")
        ax.set_title(f"{fs}: Δ vs retrain against cost", loc="left", fontsize=10)
        ax.set_xlabel("cost relative to a retrain (cell passes with gradient, log scale)")
        ax.set_ylabel("Δ vs retrain / the baseline's lead\n(0 = as retrain, 1 = as the baseline)")
    handles = [Line2D([], [], color=palette[x], lw=1.4, ls="--" if data.loc[data["line"] == x, "is_control"].any()
                      else "-", label=x) for x in lines]
    handles += [Line2D([], [], ls="", marker="o", color=VERDICT_COLORS[v], mec="black", label=v)
                for v in VERDICT_COLORS if v in set(data["verdict"])]
    handles += [Line2D([], [], color=RETRAIN_COLOR, alpha=0.5, lw=8, label="retrained models (±1 SD)"),
                Line2D([], [], color=BAND_COLOR, ls=":", label="equivalence margin"),
                Line2D([], [], color="#7b1010", ls="--", label="the baseline (no unlearning)")]
    _legend_outside(fig, handles)
    fig.suptitle(FIGURE_CAPTIONS[stem][0])
    return _save(fig, data, out_dir, stem)


def make_figures(summary: pd.DataFrame, trajectories: Iterable[Mapping],
                 out_dir: str | os.PathLike, forget_set: str | None = None,
                 margin: float | None = None, frontier: pd.DataFrame | None = None) -> dict[str, Path]:
    """Draw every figure of :data:`FIGURE_CAPTIONS` into ``out_dir``; returns {stem: png path} in that order.

    ``forget_set`` picks the MLP comparison figure's set (default: structured if present,
    else the first); ``margin`` is the equivalence margin shaded in Figure 1.
    """
    summary = validate_summary(summary)
    fs = main_forget_set(summary, forget_set)
    paths = [
        fig_per_cell_audit(summary, out_dir, margin),
        fig_trajectories(summary, trajectories, out_dir),
        fig_method_comparison(summary, out_dir, fs),
        fig_summary(summary, out_dir),
        fig_privacy_utility(summary, out_dir),
        fig_seed_cis(summary, out_dir),
        fig_frontier(frontier, out_dir),
    ]
    out = {p.stem: p for p in paths}
    if list(out) != list(FIGURE_CAPTIONS):
        raise AssertionError(f"figures {list(out)} and captions {list(FIGURE_CAPTIONS)} disagree")
    return out
