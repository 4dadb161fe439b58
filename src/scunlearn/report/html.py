"""The self-contained HTML report: tables, figures (embedded PNGs), config and provenance.

Built from plain strings with ``html.escape`` (no template engine), so the page is one file
that can be mailed or archived; the tables and figure data are also written as TSVs.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import yaml

from ..io import write_tsv, write_with
from .figures import FIGURE_CAPTIONS, make_figures
from .tables import (TABLE_TITLES, VERDICTS, build_tables, forget_set_order, main_forget_set,
                     read_summary, validate_summary)

#: Column (and Table IV row) names -> header text; the TSV name shows on hover.
LABELS = {
    "forget_set": "forget set", "auc_mean": "mean AUC", "auc_sd": "SD", "floor": "floor",
    "gap_to_floor": "gap to floor", "success_rate": "success rate", "n_seeds": "n seeds",
    "band_low": "band low", "band_high": "band high", "auc_ci_low_mean": "mean CI low",
    "auc_ci_high_mean": "mean CI high", "tpr_at_1pct_fpr": "TPR @ 1% FPR",
    "loss_attack_auc": "LOSS-attack AUC", "recon_mse": "recon MSE", "marker_mse": "marker MSE",
    "latent_acc": "latent accuracy", "val_elbo": "val ELBO", "wall_s": "wall time (s)",
    "max_rss_mb": "peak memory (MB)", "cost_vs_retrain": "cost vs retrain",
    "n_models": "n models",
}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.txt,th.txt{text-align:left}
td.v-SUCCESS{background:#dff0d8}td.v-FAIL,td.v-LEAK{background:#f8d7da}
td.v-OVER-UNLEARN{background:#fff3cd}td.v-TARGET{background:#d9e8f6}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.92em;color:#333;max-width:900px}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.8em;overflow-x:auto;font-size:.85em}
nav a{margin-right:1em}.empty{color:#777;font-style:italic}
"""


def _cell(value: Any, label: str) -> str:
    """One value as table text: 3 decimals (significant digits when tiny), NaN as a dash."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "—"
        if label.startswith("n_") and float(value).is_integer():
            return str(int(value))
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.3f}"
    return html.escape(str(value))


def _td(value: Any, label: str) -> str:
    """A <td> with a class for verdicts (coloured) and for left-aligned text."""
    text = _cell(value, label)
    if isinstance(value, str):
        cls = f"txt v-{value}" if value in VERDICTS else "txt"
        return f'<td class="{cls}">{text}</td>'
    return f"<td>{text}</td>"


def _th(name: Any) -> str:
    """A header cell with the readable label and the TSV column name as tooltip."""
    name = str(name)
    return f'<th title="{html.escape(name)}">{html.escape(LABELS.get(name, name))}</th>'


def render_table(df: pd.DataFrame, table_id: str) -> str:
    """A DataFrame as an HTML table (index shown only when named, as in Table IV)."""
    show_index = df.index.name is not None
    head = (_th(df.index.name) if show_index else "") + "".join(_th(c) for c in df.columns)
    rows = []
    for idx, row in df.iterrows():
        label = str(idx)
        first = f'<td class="txt" title="{html.escape(label)}">{html.escape(LABELS.get(label, label))}</td>'
        cells = "".join(_td(v, label if show_index else str(c)) for c, v in row.items())
        rows.append(f"<tr>{first if show_index else ''}{cells}</tr>")
    body = "".join(rows)
    note = '<p class="empty">No models of this kind in this run.</p>' if df.empty else ""
    return (f'<table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>{note}")


def _kv_table(items: Iterable[tuple[str, Any]]) -> str:
    """A two-column key/value table."""
    rows = "".join(f'<tr><td class="txt">{html.escape(str(k))}</td>'
                   f'<td class="txt"><code>{html.escape(str(v))}</code></td></tr>' for k, v in items)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _flatten(d: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dict -> [(dotted key, value)]; lists are joined with commas."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v))
    return out


def render_provenance(provenance: Mapping) -> str:
    """Provenance dict as key/value tables: scalars first, then one table per nested dict."""
    scalars = [(k, v) for k, v in provenance.items() if not isinstance(v, Mapping)]
    parts = [_kv_table(_flatten(dict(scalars)))] if scalars else []
    for k, v in provenance.items():
        if isinstance(v, Mapping):
            parts.append(f"<h3>{html.escape(str(k))}</h3>{_kv_table(_flatten(v))}")
    return "".join(parts) or '<p class="empty">No provenance recorded.</p>'


def render_config(config: Mapping) -> str:
    """The run's config as YAML in a <pre> block (non-plain values stringified)."""
    plain = json.loads(json.dumps(config, default=str))
    text = yaml.safe_dump(plain, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return f"<pre>{html.escape(text)}</pre>"


def _tolerance(config: Mapping, summary: pd.DataFrame) -> float:
    """Band half-width: the config's audit.tolerance, else read off the summary."""
    tol = (config.get("audit") or {}).get("tolerance") if isinstance(config, Mapping) else None
    return float(tol) if tol is not None else float((summary["band_high"] - summary["floor"]).median())


def render_reading_guide(summary: pd.DataFrame, tolerance: float) -> str:
    """'How to read this': band, verdicts, and the AUC's own noise measured in this run."""
    bands = summary.groupby("forget_set", sort=False).agg(
        floor=("floor", "first"), floor_sd=("floor_sd", "first"), band_low=("band_low", "first"),
        band_high=("band_high", "first"), n_forget=("n_forget", "median"),
        n_neg=("n_negatives", "median"))
    items = []
    for fs, b in bands.iterrows():
        counts = ("" if pd.isna(b.n_forget) else
                  f"; {int(b.n_forget)} forget cells vs {_cell(b.n_neg, 'n_')} matched negatives")
        items.append(f"<li><b>{html.escape(str(fs))}</b>: floor {_cell(b.floor, '')} "
                     f"(SD over retrain seeds {_cell(b.floor_sd, '')}), band "
                     f"[{_cell(b.band_low, '')}, {_cell(b.band_high, '')}]{counts}</li>")
    half = float(((summary["auc_ci_high"] - summary["auc_ci_low"]) / 2).median())
    n_pos, n_neg = summary["n_forget"].median(), summary["n_negatives"].median()
    if pd.notna(n_pos) and pd.notna(n_neg) and n_pos > 0 and n_neg > 0:
        # 95% range of a chance-level AUC (Hanley & McNeil 1982, AUC = 0.5)
        chance = 1.96 * np.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))
        noise_size = (f"With {int(n_pos)} positives and {int(n_neg)} negatives the AUC's own "
                      f"sampling noise is about ±{chance:.2f}")
    else:
        noise_size = "With about 30 positives the AUC's own sampling noise is about ±0.1"
    ci_note = (f"In this run the median half-width of a model's 95% bootstrap CI is "
               f"{_cell(half, '')}. " if np.isfinite(half) else "")
    return f"""
<p>Every model is audited after the fact by a fresh membership-inference attacker that tries
to tell the forget cells (positives) from matched cells the model never saw (negatives);
its out-of-fold AUC is 0.5 when it cannot tell them apart. The <b>retrain floor</b> is the mean
AUC of models retrained from scratch without the forget set, the gold standard; the
<b>target band</b> is floor ± {tolerance:g}. Verdicts: <b>LEAK</b> the baseline is
above the band (it leaks membership); <b>TARGET</b> a retrained model; <b>SUCCESS</b> an
unlearned model inside the band; <b>FAIL</b> above the band (still leaks); <b>OVER-UNLEARN</b>
below the band (the forget cells now look less like members than unseen cells do, which
itself gives them away: the Streisand effect). A table's <i>status</i> applies this rule to
the mean AUC over seeds; its <i>success rate</i> is the fraction of seeds that are SUCCESS.</p>
<p><b>Mind the noise.</b> {noise_size}, against a band half-width of {tolerance:g}.
{ci_note}A mean inside the band can hide seeds outside it and the reverse, so read the
confidence intervals (Figure 5) and the success rate, not only the digits.</p>
<ul>{''.join(items)}</ul>"""


def _embed_png(path: Path) -> str:
    """A PNG file as a base64 data URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_figure(stem: str, png: Path) -> str:
    """One <figure> with the embedded PNG, its caption and a link to its data TSV."""
    title, caption = FIGURE_CAPTIONS[stem]
    return (f'<figure id="{stem}"><img src="{_embed_png(png)}" alt="{html.escape(title)}">'
            f"<figcaption><b>{html.escape(title)}.</b> {html.escape(caption)} "
            f'Data: <a href="figures/{stem}.tsv">figures/{stem}.tsv</a>.</figcaption></figure>')


def _run_name(config: Mapping, summary: pd.DataFrame) -> str:
    """The run's name from the config, else from the summary's ``run`` column."""
    name = config.get("run") if isinstance(config, Mapping) else None
    if name is None and summary["run"].notna().any():
        name = summary["run"].dropna().iloc[0]
    return str(name) if name is not None else "unnamed run"


def build_report(summary_tsv: str | os.PathLike | pd.DataFrame, trajectories: Iterable[Mapping],
                 out_dir: str | os.PathLike, config: Mapping, provenance: Mapping,
                 forget_set: str | None = None) -> Path:
    """Write tables/*.tsv, figures/*.png + *.tsv and one self-contained index.html to ``out_dir``.

    ``trajectories``: dicts {variant, method, forget_set, seed, path} of the methods' logs;
    ``forget_set``: the set of Table II / Fig. 2 (default structured, else the first).
    Returns the path of index.html.
    """
    if isinstance(summary_tsv, pd.DataFrame):
        summary = validate_summary(summary_tsv)
    else:
        summary = read_summary(summary_tsv)
    out = Path(out_dir)
    fs = main_forget_set(summary, forget_set)

    tables = build_tables(summary, fs)
    for stem, df in tables.items():
        write_tsv(df.reset_index() if df.index.name else df, out / "tables" / f"{stem}.tsv")
    figures = make_figures(summary, list(trajectories), out / "figures", fs)

    run = _run_name(config, summary)
    datasets = ", ".join(map(str, summary["dataset"].dropna().unique())) or "—"
    table_html = "".join(
        f'<h3>{html.escape(TABLE_TITLES[stem].format(forget_set=fs))}</h3>'
        f'{render_table(df, stem)}<p><a href="tables/{stem}.tsv">tables/{stem}.tsv</a></p>'
        for stem, df in tables.items())
    figure_html = "".join(render_figure(stem, png) for stem, png in figures.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>scunlearn report: {html.escape(run)}</title><style>{CSS}</style></head><body>
<h1>scunlearn report: {html.escape(run)}</h1>
<p class="sub">dataset: {html.escape(datasets)} · {len(summary)} audited models ·
forget sets: {html.escape(', '.join(forget_set_order(summary)))} ·
seeds: {html.escape(', '.join(map(str, sorted(summary['seed'].unique()))))}</p>
<nav><a href="#guide">How to read this</a><a href="#tables">Tables</a>
<a href="#figures">Figures</a><a href="#config">Config</a><a href="#provenance">Provenance</a></nav>
<h2 id="guide">How to read this</h2>{render_reading_guide(summary, _tolerance(config, summary))}
<h2 id="tables">Tables</h2>{table_html}
<h2 id="figures">Figures</h2>{figure_html}
<h2 id="config">Config</h2>{render_config(config)}
<h2 id="provenance">Provenance</h2>{render_provenance(provenance)}
</body></html>
"""
    index = out / "index.html"
    write_with(index, lambda p: p.write_text(page, encoding="utf-8"))
    return index
