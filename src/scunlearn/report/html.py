"""The self-contained HTML report: audit power, method comparison, the paper's tables,
figures (embedded PNGs), config and provenance.

Built from plain strings with ``html.escape`` (no template engine), so the page is one file
that can be mailed or archived; the tables and figure data are also written as TSVs with
exact numbers. Only this module rounds. The page opens with the findings (per forget set, the
best method, its cost and whether the controls passed) and the verdicts behind them, then what
the audit can detect on this study (its controls), on which every verdict depends.
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

from scunlearn.data.labels import SCORES_KEY, scores_table, unsure_clusters
from scunlearn.io import write_tsv, write_with
from scunlearn.report.captions import TABLES
from scunlearn.report.figures import FIGURE_CAPTIONS, make_figures
from scunlearn.report.tables import (
    BETTER,
    CONTROL_METHOD,
    DIFFERS,
    PAPER_TABLES,
    PAPER_VERDICTS,
    TABLE_TITLES,
    VERDICTS,
    build_tables,
    findings,
    forget_set_order,
    gap_closed_text,
    main_forget_set,
    read_summary,
    validate_summary,
)

#: Column (and Table IV row) names -> header text; the TSV name shows on hover.
LABELS = {
    "forget_set": "forget set", "floor": "floor",
    "gap_to_floor": "gap to floor", "success_rate": "success rate", "n_seeds": "n seeds",
    "band_low": "band low", "band_high": "band high", "auc_ci_low_mean": "mean CI low",
    "auc_ci_high_mean": "mean CI high", "loss_attack_auc": "LOSS-attack AUC", "recon_mse": "recon MSE",
    "marker_mse": "marker MSE",
    "latent_acc": "latent accuracy", "val_elbo": "val ELBO", "wall_s": "wall time (s)",
    "max_rss_mb": "peak memory (MB)", "cost_vs_retrain": "cost vs retrain",
    "setup_cost_vs_retrain": "setup cost vs retrain",
    "n_models": "n models", "paper_status": "paper status (band rule only)",
    "paper_vs_verdicts": "vs per-cell verdicts",
    "paper_success_rate": "paper success rate", "pc_auc_mean": "per-cell AUC",
    "pc_auc_sd": "per-cell SD", "verdicts": "verdicts (seeds)", "delta_mean": "Δ vs retrain",
    "forget_gap_closed": "forget gap closed", "pc_tpr_at_1pct_fpr": "per-cell TPR @ 1% FPR",
    "tpr_at_1pct_fpr": "MLP TPR @ 1% FPR", "auc_mean": "MLP AUC", "auc_sd": "MLP SD",
}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1400px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.txt,th.txt{text-align:left}
td.v-SUCCESS{background:#dff0d8}td.v-FAIL,td.v-LEAK{background:#f8d7da}
td.v-OVER-UNLEARN{background:#fff3cd}td.v-TARGET{background:#d9e8f6}
td.v-INCONCLUSIVE,td.v-NO-LEAK,td.v-NOT-COMPARABLE{background:#eeeeee}
tr.ref td{background:#f7f7fb;font-style:italic}tr.fs-start td{border-top:2px solid #888}
td.warn{color:#a15c00;font-weight:600}td.good{color:#1e6b2a;font-weight:600}
.alert{background:#f8d7da;border:1px solid #e0a4aa;padding:.6em .9em;border-radius:4px}
.ok{background:#e8f4ea;border:1px solid #b6d9bd;padding:.6em .9em;border-radius:4px}
.rule{color:#555;font-size:.92em}
.scroll{overflow-x:auto}#method_comparison{font-size:.84em}#method_comparison td.num{white-space:nowrap}
#method_comparison small{display:block;white-space:nowrap}#method_comparison td.lbl{min-width:9em}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.92em;color:#333;max-width:900px}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.8em;overflow-x:auto;font-size:.85em}
nav a{margin-right:1em}.empty{color:#777;font-style:italic}
#findings ul{padding-left:0;list-style:none}#findings li{margin:.35em 0;padding:.45em .8em;border-radius:4px;
border:1px solid #ddd;background:#f7f7f7}#findings li.f-success{background:#e8f4ea;border-color:#b6d9bd}
#findings li.f-failed{background:#f8d7da;border-color:#e0a4aa}
table.verdicts td.num,table.verdicts td[class*="v-"]{white-space:nowrap}
table.verdicts th:first-child,table.verdicts th:nth-last-child(-n+2){text-align:left}
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
        if abs(value) < 1e-12:  # float noise around 0 (e.g. the baseline's gap closed)
            return "0.000"
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.3f}"
    return html.escape(str(value))


def _td(value: Any, label: str) -> str:
    """A <td> with a class for verdicts (coloured) and for left-aligned text; the gap closed marked off its
    0–1 scale, and a paper status that no per-cell verdict shares marked."""
    if label == "forget_gap_closed":
        return f"<td>{html.escape(gap_closed_text(value))}</td>"
    if label == "paper_vs_verdicts":
        return '<td class="txt warn">≠ per-cell verdicts</td>' if value == DIFFERS else '<td class="txt"></td>'
    text = _cell(value, label)
    if isinstance(value, str):
        cls = f"txt v-{value}" if value in VERDICTS or value in PAPER_VERDICTS else "txt"
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


def render_cell_type_labels(record: Mapping | None, config: Mapping) -> str:
    """A warning listing the clusters whose cell-type label is unsure (best marker score below
    ``preprocess.min_marker_score``, so ``unknown``; or a runner-up type close behind) and the ``cell_type``
    forget sets on their types, from the preprocessed data's ``uns['cell_type_scores']``; empty when all are sure."""
    table = scores_table({SCORES_KEY: record}) if record is not None else None
    if table is None:
        return ""
    threshold, margin = float(record["min_marker_score"]), float(record["weak_margin"])
    unsure = unsure_clusters(table, threshold)
    if unsure.empty:
        return ""
    rows = "".join(
        f'<tr><td class="txt">{html.escape(r.cluster)}</td><td>{r.n_cells}</td><td class="txt">{html.escape(r.label)}'
        f'</td><td class="txt">{html.escape(r.best_type)} {_fixed(r.best_score)}</td><td class="txt">'
        f"{html.escape(r.runner_up_type)} {_fixed(r.runner_up_score)}</td><td class=\"txt\">"
        f"{'below the threshold' if r.best_score < threshold else f'runner-up within {margin:g}'}</td></tr>"
        for r in unsure.itertuples())
    types = set(unsure["best_type"])
    sets = [f"{name} ({spec['cell_type']}{', accept_weak_labels' if spec.get('accept_weak_labels') else ''})"
            for name, spec in (config.get("forget_sets") or {}).items()
            if isinstance(spec, Mapping) and spec.get("kind") == "cell_type" and spec.get("cell_type") in types]
    on = (f" Forget sets on these types: {html.escape(', '.join(sets))}: their cells may not all be of the type."
          if sets else "")
    return (f'<div class="alert"><p><strong>Cell-type labels:</strong> {len(unsure)} of {len(table)} clusters are '
            f"labelled unsurely (preprocess.min_marker_score = {threshold:g}; data/adata.h5ad "
            f"<code>uns['cell_type_scores']</code> holds every cluster's scores).{on}</p>"
            "<table><thead><tr><th>cluster</th><th>cells</th><th>label</th><th>best type, score</th>"
            f"<th>runner-up, score</th><th>why</th></tr></thead><tbody>{rows}</tbody></table></div>")


def render_config(config: Mapping) -> str:
    """The run's config as YAML in a <pre> block (non-plain values stringified)."""
    plain = json.loads(json.dumps(config, default=str))
    text = yaml.safe_dump(plain, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return f"<pre>{html.escape(text)}</pre>"


def _audit_setting(config: Mapping, key: str, default=None):
    """``audit.<key>`` of the run's config, else ``default``."""
    return (config.get("audit") or {}).get(key, default) if isinstance(config, Mapping) else default


def _tolerance(config: Mapping, summary: pd.DataFrame) -> float:
    """Band half-width: the config's audit.tolerance, else read off the summary."""
    tol = _audit_setting(config, "tolerance")
    return float(tol) if tol is not None else float((summary["band_high"] - summary["floor"]).median())


def _k_of_n(k: Any, n: Any) -> str:
    """'k of n' from two counts."""
    return f"{int(k)} of {int(n)}"


def power_sentence(row: Mapping) -> str:
    """One plain sentence (HTML) on what the audit could detect on one forget set.

    When a control failed it says so and that nothing is called SUCCESS: the verdicts
    of the per-cell audit are only as good as its controls.
    """
    fs = html.escape(str(row["forget_set"]))
    mdd = row["min_detectable_delta"]
    mdd_txt = (f"; the smallest Δ it detects with 80% power is {_cell(mdd, '')}"
               if pd.notna(mdd) else "")
    refs = f" ({int(row['n_references'])} reference models per audit)" if pd.notna(row["n_references"]) else ""
    seen = (f"On the <b>{fs}</b> forget set the baseline was detected in "
            f"{_k_of_n(row['baseline_caught'], row['n_baseline'])} seeds and the retrained models "
            f"raised {_k_of_n(row['retrain_false_alarms'], row['n_retrain'])} false alarms")
    if row["n_baseline"] == 0:
        return (f'<p class="alert">On the <b>{fs}</b> forget set there is no baseline model: the audit\'s '
                "positive control is missing, so it calls nothing SUCCESS.</p>")
    if row["baseline_caught"] < row["n_baseline"]:
        return (f'<p class="alert">{seen}: this audit could not catch the un-unlearned baseline, '
                f"so it calls nothing SUCCESS{mdd_txt}{refs}.</p>")
    if row["retrain_false_alarms"] > 0:
        return (f'<p class="alert">{seen}: this audit flagged retrained models that never saw the '
                f"forget cells, so it calls nothing SUCCESS{mdd_txt}{refs}.</p>")
    return f'<p class="ok">{seen}: the controls passed{mdd_txt}{refs}.</p>'


def render_power(power: pd.DataFrame) -> str:
    """The opening section: one sentence per forget set, then the power table (rounded)."""
    sentences = "".join(power_sentence(r) for r in power.to_dict("records"))
    head = ["forget set", "baseline detected (seeds)", "retrain false alarms", "controls",
            "baseline mean Δ vs retrain", "smallest detectable Δ", "reference models"]
    rows = []
    for r in power.to_dict("records"):
        ok = bool(r["controls_ok"])
        cells = [
            f'<td class="txt">{html.escape(str(r["forget_set"]))}</td>',
            f"<td>{_k_of_n(r['baseline_caught'], r['n_baseline'])}</td>",
            f"<td>{_k_of_n(r['retrain_false_alarms'], r['n_retrain'])}</td>",
            f'<td class="txt {"good" if ok else "warn"}">{"passed" if ok else "FAILED"}</td>',
            f"<td>{_signed(r['baseline_delta_mean'])}</td>",
            f"<td>{_cell(r['min_detectable_delta'], '')}</td>",
            f"<td>{_cell(r['n_references'], 'n_')}</td>",
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    thead = "".join(f'<th>{html.escape(h)}</th>' for h in head)
    table = (f'<table id="audit_power"><thead><tr>{thead}</tr></thead><tbody>{"".join(rows)}</tbody>'
             f'</table><p><a href="tables/audit_power.tsv">tables/audit_power.tsv</a></p>')
    return (f"{sentences}<p class=\"rule\">{html.escape(TABLES['audit_power'][1])}</p>{table}")


def render_controls(controls: pd.DataFrame | None, alpha: float = 0.05) -> str:
    """Every baseline and retrained model audited leave-one-out against the others: the judge's
    controls seed by seed, with the retrained models' AUCs (the null every model is judged against)."""
    if controls is None or not len(controls):
        return ""
    parts = []
    for fs, g in controls.groupby("forget_set", sort=False):
        null, leak = g[g["kind"] == "retrain"], g[g["kind"] == "baseline"]
        n_ret = len(null)
        flagged = null["outcome"].isin(["ABOVE", "BELOW"]) & (null["p"] < alpha / max(n_ret, 1))
        rows = "".join(
            f'<tr><td class="txt">{"baseline (IN)" if r.kind == "baseline" else "retrained (OUT)"}</td>'
            f'<td class="txt">{html.escape(str(r.model))}</td><td>{_fixed(r.pc_auc)}</td>'
            f"<td>{_signed(r.pc_shift)}</td><td>{_signed(r.delta)}</td>"
            f'<td>{_p(r.p)}</td><td class="txt">{html.escape(str(r.outcome))}</td></tr>'
            for r in g.itertuples())
        parts.append(
            f"<h3>Controls on {html.escape(str(fs))}: every seed</h3>"
            f"<p>{int((leak['outcome'] == 'ABOVE').sum())} of {len(leak)} baseline models caught (expected: all); "
            f"{int(flagged.sum())} of {n_ret} retrained models flagged at α/{n_ret} (a calibrated test flags one in at "
            f"most {alpha:.0%} of studies); {int(null['outcome'].isin(['ABOVE', 'BELOW']).sum())} rejected at α "
            f"(expected {n_ret * alpha:.2f}). Retrained models' leave-one-out score shifts (the null): "
            f"{html.escape(', '.join(f'{a:+.3f}' for a in sorted(null['pc_shift'])))}.</p>"
            '<div class="scroll"><table><thead><tr><th>model</th><th>seed</th><th>per-cell AUC</th>'
            "<th>score shift</th><th>Δ vs the others</th><th>p</th><th>test</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")
    return "".join(parts) + '<p><a href="controls.tsv">controls.tsv</a></p>'


def _signed(v: Any) -> str:
    """A difference with its sign (3 decimals), NaN as a dash."""
    if v is None or pd.isna(v):
        return "—"
    return f"{float(v):+.3f}".replace("-", "−")


def _interval(mean: Any, low: Any, high: Any, signed: bool = False) -> str:
    """'mean [low, high]' with 3 decimals; the interval left out when unknown."""
    fmt = _signed if signed else (lambda x: _cell(x, ""))
    if mean is None or pd.isna(mean):
        return "—"
    if pd.isna(low) or pd.isna(high):
        return fmt(mean)
    return f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"


def _fixed(v: Any) -> str:
    """3 decimals, always (so float noise around 0 reads 0.000, not 1e-16), NaN as a dash."""
    return "—" if v is None or pd.isna(v) else f"{float(v):.3f}".replace("-0.000", "0.000")


def _p(v: Any) -> str:
    """A p value: 3 decimals, '<0.001' below."""
    if v is None or pd.isna(v):
        return "—"
    return "&lt;0.001" if v < 0.001 else f"{v:.3f}"


def _p_range(lo: Any, hi: Any) -> str:
    """The range of per-seed p values ('0.010–0.040'), one value when they agree."""
    if pd.isna(lo) and pd.isna(hi):
        return "—"
    if pd.isna(lo) or pd.isna(hi) or _p(lo) == _p(hi):
        return _p(lo if pd.notna(lo) else hi)
    return f"{_p(lo)}–{_p(hi)}"


def _num(text: str) -> str:
    """A numeric cell that does not wrap (an estimate with its interval stays on one line)."""
    return f'<td class="num">{text}</td>'


def render_comparison(comp: pd.DataFrame) -> str:
    """The method comparison table (HTML): intervals, labels and marks composed from the exact TSV columns."""
    head = ["forget set", "variant", "seeds", "per-cell AUC [mean 95% CI]", "Δ vs retrain [mean 95% CI]",
            "p vs retrain (seeds)", "Δ vs fine-tuning [mean 95% CI]", "vs fine-tuning", "forget gap closed",
            "verdicts (seeds)", "latent accuracy", "recon MSE", "val ELBO", "cost vs retrain",
            "setup cost vs retrain"]
    # without a control in the study the two fine-tuning columns would say so on every row: say it once
    has_control = bool((comp["method"] == CONTROL_METHOD).any() or comp["dft_mean"].notna().any())
    keep = [i for i in range(len(head)) if has_control or i not in (6, 7)]
    # the setup cost column only when a method has an up-front job (sisa's shards)
    if not comp["setup_cost_vs_retrain"].notna().any():
        keep.remove(head.index("setup cost vs retrain"))
    rows, last_fs = [], None
    for r in comp.to_dict("records"):
        classes = []
        if r["method"] in ("retrain", CONTROL_METHOD):
            classes.append("ref")
        if r["forget_set"] != last_fs and last_fs is not None:
            classes.append("fs-start")
        last_fs = r["forget_set"]
        label = r["vs_finetune"]
        label_cls = "good" if label == BETTER else ("warn" if label and label != "control" else "")
        verdicts = str(r["verdicts"])
        kinds = {v.split(" ", 1)[1] for v in verdicts.split(", ") if " " in v}
        v_cls = f" v-{kinds.pop()}" if len(kinds) == 1 else ""
        cost = _cell(r["cost_vs_retrain"], "")
        cost_td = (f'<td class="warn num">{cost} ▲<small>costs more than retraining</small></td>'
                   if r["costs_more_than_retrain"] else f'<td class="num">{cost}</td>')
        cells = [
            f'<td class="txt">{html.escape(str(r["forget_set"]))}</td>',
            f'<td class="txt" title="method: {html.escape(str(r["method"]))}">{html.escape(str(r["variant"]))}</td>',
            f"<td>{_cell(r['n_seeds'], 'n_')}</td>",
            _num(_interval(r["pc_auc_mean"], r["pc_auc_ci_low_mean"], r["pc_auc_ci_high_mean"])),
            _num(_interval(r["delta_mean"], r["delta_ci_low_mean"], r["delta_ci_high_mean"], signed=True)),
            _num(_p_range(r["p_vs_retrain_min"], r["p_vs_retrain_max"])),
            _num(_interval(r["dft_mean"], r["dft_ci_low_mean"], r["dft_ci_high_mean"], signed=True)),
            f'<td class="txt lbl {label_cls}">{html.escape(label) or "—"}</td>',
            f"<td>{html.escape(gap_closed_text(r['forget_gap_closed']))}</td>",
            f'<td class="txt{v_cls}">{html.escape(verdicts)}</td>',
            f"<td>{_fixed(r['latent_acc'])}</td>",
            f"<td>{_cell(r['recon_mse'], '')}</td>",
            f"<td>{_fixed(r['val_elbo'])}</td>",
            cost_td,
            f"<td>{_cell(r['setup_cost_vs_retrain'], '')}</td>",
        ]
        cls = f' class="{" ".join(classes)}"' if classes else ""
        rows.append(f"<tr{cls}>{''.join(cells[i] for i in keep)}</tr>")
    thead = "".join(f"<th>{html.escape(head[i])}</th>" for i in keep)
    no_control = ("" if has_control else
                  f'<p class="alert">This study has no fine-tuning control (a variant of method '
                  f"<code>{CONTROL_METHOD}</code>), so no method is compared with merely fine-tuning on "
                  f"the retain cells; add one to the config to see whether a method does more.</p>")
    return (f'{no_control}<div class="scroll"><table id="method_comparison"><thead><tr>{thead}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>'
            f'<p class="rule">{html.escape(TABLES["method_comparison"][1])} Italic rows: the '
            f"fine-tuning control and retrain, for reference. "
            f'<a href="tables/method_comparison.tsv">tables/method_comparison.tsv</a></p>')


def render_verdicts(verdicts: pd.DataFrame | None, alpha: float = 0.05) -> str:
    """The findings first: one verdict per method variant and forget set (``verdicts.tsv``), the study's resolution,
    and the equivalence control, with the sentence a reader can quote."""
    if verdicts is None or verdicts.empty:
        return ""
    from scunlearn.audit.variants import RETRAIN_AS_METHOD

    parts = []
    for fs, g in verdicts.groupby("forget_set", sort=False):
        eq = g[g["variant"] == RETRAIN_AS_METHOD]
        meth = g[g["variant"] != RETRAIN_AS_METHOD]
        first = g.iloc[0]
        success = meth.loc[meth["verdict"] == "SUCCESS", "variant"].tolist()
        lead = (f"<b>{html.escape(', '.join(success))}</b> forgot as retraining would, within the margin"
                if success else "no variant is shown equivalent to retraining within the margin")
        res = (f"Resolution of this study: a method run on {int(first['n_models'])} seeds can be certified at a "
               f"margin of {_fixed(first['resolution'])} ({_pct(first['resolution_of_gap'])} of the baseline's lead "
               f"{_fixed(first['baseline_gap'])}); the margin used is {_fixed(first['margin'])} "
               f"({_pct(first['margin_of_gap'])}).")
        if np.isfinite(first["margin"]) and np.isfinite(first["resolution"]) and first["margin"] < first["resolution"]:
            res += (" <b>The margin is finer than the resolution</b>: even a perfect method is unlikely to be "
                    "certified; use more seeds or a wider margin.")
        eq_text = ""
        if len(eq):
            e = eq.iloc[0]
            eq_text = (" Equivalence control (retrained models posing as a method): "
                       f"<b>{html.escape(str(e['verdict']))}</b> (TOST p {_p(e['tost_p'])}).")
        rows = []
        for r in g.to_dict("records"):
            cls = ' class="ref"' if r["variant"] == RETRAIN_AS_METHOD else ""
            rows.append(
                f"<tr{cls}><td class=\"txt\">{html.escape(str(r['variant']))}</td><td>{int(r['n_models'])}</td>"
                f"{_num(_interval(r['delta'], r['delta_ci_low'], r['delta_ci_high'], signed=True))}"
                f"<td>{html.escape(gap_closed_text(r['gap_closed']))}</td><td>{_p(r['p_holm'])}</td>"
                f"<td>{_p(r['tost_p_holm'])}</td>"
                f"{_td(r['verdict'], 'verdict')}<td class=\"txt\">{html.escape(_text(r['note']))}</td></tr>")
        parts.append(
            f"<h3>{html.escape(str(fs))}: {lead}</h3><p>{res}{eq_text}</p>"
            '<div class="scroll"><table class="verdicts"><thead><tr><th>variant</th><th>models</th>'
            "<th>Δ vs retrain [95% CI]</th><th>gap closed</th><th>p (Holm)</th><th>TOST p (Holm)</th>"
            f"<th>verdict</th><th>note</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    return (f'<h2 id="verdicts">Verdicts: did unlearning work?</h2>{"".join(parts)}'
            f'<p class="rule">One verdict per method variant: its models\' values of the audit\'s measure against '
            f"the retrained models' (two-sample t, leave-one-out spread corrected), Holm across the variants of a "
            f"forget set at α = {alpha:g}; SUCCESS needs equivalence within the margin, the study's controls and "
            'the equivalence control. <a href="verdicts.tsv">verdicts.tsv</a></p>')


def render_frontier(cheapest: pd.DataFrame | None, png: Path | None) -> str:
    """What it costs to forget: per forget set, one sentence (the cheapest variant certified SUCCESS at no more
    than a retrain's cost, or none, with fine-tuning's best point at that cost), the table, then Figure 7."""
    from scunlearn.audit.frontier import cheapest_sentence

    if cheapest is None or cheapest.empty:
        return ""
    sentences = "".join(f"<li>{html.escape(cheapest_sentence(r))}</li>" for r in cheapest.to_dict("records"))
    table = render_table(cheapest.rename(columns=lambda c: c.replace("_", " ")), "frontier_cheapest")
    fig = render_figure("fig7_frontier", png) if png is not None else ""
    return (f'<h2 id="frontier">What does it cost to forget?</h2><ul class="findings">{sentences}</ul>'
            f'<div class="scroll">{table}</div><p class="rule">Cost: the mean over a variant\'s models of its cell '
            "passes with gradient through the VAE over its retrain's (compute, which no machine changes; the "
            "adversarial methods' critics and attackers are not counted), and of its job's wall time over its "
            'retrain\'s. <a href="frontier.tsv">frontier.tsv</a> · <a href="frontier_cheapest.tsv">'
            f"frontier_cheapest.tsv</a></p>{fig}")


def render_findings(verdicts: pd.DataFrame | None, summary: pd.DataFrame) -> str:
    """The first screen's answer (:func:`scunlearn.report.tables.findings`): per forget set, the best method,
    its cost relative to retraining and whether the judge's controls passed; empty without ``verdicts``."""
    if verdicts is None or verdicts.empty:
        return ""
    items = []
    for r in findings(verdicts, summary).to_dict("records"):
        failed = pd.notna(r["controls_ok"]) and not bool(r["controls_ok"])
        cls = "f-failed" if failed else "f-success" if r["kind"] == "success" else "f-other"
        fs, text = html.escape(str(r["forget_set"])), html.escape(r["sentence"])
        text = f"<b>{fs}</b>" + text[len(fs):]
        if r["variant"]:
            v = html.escape(r["variant"])
            head, _, tail = text.partition(f" {v}")
            text = f"{head} <b>{v}</b>{tail}"
        items.append(f'<li class="{cls}">{text}</li>')
    return ('<section id="findings"><h2>Findings</h2><ul>' + "".join(items) + "</ul>"
            '<p class="rule">Best method per forget set: the SUCCESS variant nearest to retraining, else the one not '
            "significantly different from retraining that comes nearest, else the nearest of the rest; NOT-COMPARABLE "
            "variants are never named. Cost: the mean wall time of its models over retraining's. The verdicts "
            "behind it follow.</p></section>")


def _text(v: Any) -> str:
    """A free-text cell: empty for a missing value (a TSV reads an empty note back as NaN)."""
    return v if isinstance(v, str) else ""


def _pct(v: Any) -> str:
    return f"{100 * float(v):.0f}%" if v is not None and np.isfinite(float(v)) else "—"


def render_claims_note(summary: pd.DataFrame) -> str:
    """What each NOT-COMPARABLE variant's numbers can and cannot support (its method's registered claim)."""
    from scunlearn.methods import REGISTRY

    nc = summary.loc[summary["verdict"] == "NOT-COMPARABLE", ["variant", "method"]].drop_duplicates()
    items = [f"<li><b>{html.escape(str(v))}</b> ({html.escape(str(m))}): {html.escape(REGISTRY[m].audit_claim)}</li>"
             for v, m in nc.itertuples(index=False) if m in REGISTRY and REGISTRY[m].audit_claim]
    if not items:
        return ""
    return ('<p class="rule" id="claims_note">NOT-COMPARABLE: the per-cell audit\'s references are single VAEs '
            "of the training recipe, and these variants' models are of another class. Their numbers are "
            f"reported; what they can and cannot support:</p><ul>{''.join(items)}</ul>")


def render_dp_note(comp: pd.DataFrame) -> str:
    """A note under the method comparison giving each DP-trained variant's (ε, δ); empty when there is none."""
    if "dp_epsilon" not in comp or comp["dp_epsilon"].isna().all():
        return ""
    dp = comp[comp["dp_epsilon"].notna()].drop_duplicates(["variant", "dp_epsilon", "dp_delta"])
    items = "; ".join(f"<b>{html.escape(str(r['variant']))}</b>: ε = {r['dp_epsilon']:.2f} at δ = {r['dp_delta']:.2g}"
                      for r in dp.to_dict("records"))
    return (f'<p class="rule" id="dp_note">Private-training anchors (DP-SGD from scratch on every training '
            f"cell, forget cells included; nothing was unlearned): {items}. ε from Opacus's RDP accountant "
            f"for every step taken (the largest over seeds); a membership attack's TPR on any training cell is "
            f"at most e<sup>ε</sup>·FPR + δ.</p>")


def render_reading_guide(summary: pd.DataFrame, tolerance: float, margin: float | None) -> str:
    """'How to read this': the per-cell audit and its verdicts, then the paper's band rule, and the noise."""
    bands = summary.groupby("forget_set", sort=False).agg(
        floor=("floor", "first"), floor_sd=("floor_sd", "first"), band_low=("band_low", "first"),
        band_high=("band_high", "first"), n_forget=("n_forget", "median"),
        n_neg=("n_negatives", "median"))
    items = []
    for fs, b in bands.iterrows():
        counts = ("" if pd.isna(b.n_forget) else
                  f"; {int(b.n_forget)} forget cells vs {_cell(b.n_neg, 'n_')} matched negatives")
        items.append(f"<li><b>{html.escape(str(fs))}</b>: paper's floor {_cell(b.floor, '')} "
                     f"(SD over retrain seeds {_cell(b.floor_sd, '')}), band "
                     f"[{_cell(b.band_low, '')}, {_cell(b.band_high, '')}]{counts}</li>")
    half = float(((summary["pc_auc_ci_high"] - summary["pc_auc_ci_low"]) / 2).median())
    n_pos, n_neg = summary["n_forget"].median(), summary["n_negatives"].median()
    if pd.notna(n_pos) and pd.notna(n_neg) and n_pos > 0 and n_neg > 0:
        # 95% range of a chance-level AUC (Hanley & McNeil 1982, AUC = 0.5)
        chance = 1.96 * np.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))
        noise_size = (f"With {int(n_pos)} positives and {int(n_neg)} negatives an AUC's own "
                      f"sampling noise is about ±{chance:.2f}")
    else:
        noise_size = "With about 30 positives an AUC's own sampling noise is about ±0.1"
    ci_note = (f"In this run the median half-width of a model's 95% CI of the per-cell AUC is "
               f"{_cell(half, '')}. " if np.isfinite(half) else "")
    margin_txt = f"±{margin:g}" if margin is not None and np.isfinite(margin) else "the configured margin"
    return f"""
<p><b>The per-cell audit (primary).</b> For every cell, the audited model's ELBO is compared with
the ELBOs of reference models retrained without the forget set on the <i>same</i> cell
(LiRA-style calibration), so a cell's score says how much better the model fits it than
models that never saw it would. The <b>per-cell AUC</b> separates the forget cells from
matched cells no model trained on; 0.5 means no membership signal. <b>Δ vs retrain</b> (by
default) is the forget cells' mean score above every audit cell's (each cell centred on unseen
cells of its own type; a forgotten type kept whole), in per-cell reference SDs, minus the
retrained models' value on the same cells; its 95% CI and p come from the spread of the
retrained models themselves, each scored against the others (listed under the controls). A
model that forgot like retraining has Δ ≈ 0. Verdicts per model: <b>LEAK</b> the
baseline is significantly above retrain (the audit caught it: the positive control);
<b>TARGET</b> a retrained model; <b>FAIL</b> significantly above retrain; <b>OVER-UNLEARN</b>
significantly below (the forget cells now look less like members than unseen cells do,
which itself gives them away); <b>SUCCESS</b> equivalence to retrain within {margin_txt}
shown (TOST) <i>and</i> the study's controls passed; <b>INCONCLUSIVE</b> none of these
could be shown. <b>Δ vs fine-tuning</b> compares with the control that only fine-tunes on
the retain cells: a method is "better than fine-tuning" only when that CI lies below 0.
<b>Forget gap closed</b>: the share of the baseline's excess forget-cell score a model
removed (1 = like retrain, 0 = like the baseline).</p>
<p class="rule"><b>The paper's rule (secondary, for comparison with the paper).</b> The paper's
MLP attack (an MLP on per-cell model features, out-of-fold AUC) is judged against the
<b>retrain floor</b> (mean AUC of the retrained models) and the <b>target band</b> floor ±
{tolerance:g}: LEAK / NO-LEAK for the baseline, SUCCESS inside the band, FAIL above,
OVER-UNLEARN below, TARGET for retrain. The paper's tables show this rule as <i>paper
status</i> (applied to the mean over seeds) and <i>paper success rate</i> (share of seeds),
with the per-cell AUC and verdicts beside them.</p>
<p><b>Mind the noise.</b> {noise_size}, against a band half-width of {tolerance:g}.
{ci_note}A mean can hide seeds on either side, so read the intervals and the verdicts of
every seed, not only the digits.</p>
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


def _margin(config: Mapping) -> float | None:
    """The equivalence margin of the per-cell audit from the config (``audit.equivalence_margin``)."""
    m = _audit_setting(config, "equivalence_margin")
    return float(m) if isinstance(m, (int, float)) else None  # a fraction of the baseline's lead: per forget set


def build_report(summary_tsv: str | os.PathLike | pd.DataFrame, trajectories: Iterable[Mapping],
                 out_dir: str | os.PathLike, config: Mapping, provenance: Mapping,
                 forget_set: str | None = None, controls: pd.DataFrame | None = None,
                 cell_type_scores: Mapping | None = None, verdicts: pd.DataFrame | None = None,
                 frontier: pd.DataFrame | None = None, cheapest: pd.DataFrame | None = None) -> Path:
    """Write tables/*.tsv, figures/*.png + *.tsv and one self-contained index.html to ``out_dir``.

    ``trajectories``: dicts {variant, method, forget_set, seed, path} of the methods' logs;
    ``forget_set``: the set of Table II and the MLP comparison figure (default structured,
    else the first); ``controls``: the controls stage's per-model trials (``report/controls.tsv``);
    ``cell_type_scores``: the preprocessed data's ``uns['cell_type_scores']`` (unsure labels are shown);
    ``verdicts``: ``report/verdicts.tsv`` (one verdict per variant), shown first; ``frontier`` / ``cheapest``:
    ``report/frontier.tsv`` and ``report/frontier_cheapest.tsv`` (Figure 7 and the cheapest-SUCCESS answer).
    Returns the path of index.html.
    """
    if isinstance(summary_tsv, pd.DataFrame):
        summary = validate_summary(summary_tsv)
    else:
        summary = read_summary(summary_tsv)
    out = Path(out_dir)
    fs = main_forget_set(summary, forget_set)
    margin = _margin(config)

    tables = build_tables(summary, fs, _audit_setting(config, "alpha", 0.05))
    for stem, df in tables.items():
        write_tsv(df.reset_index() if df.index.name else df, out / "tables" / f"{stem}.tsv")
    figures = make_figures(summary, list(trajectories), out / "figures", fs, margin=margin, frontier=frontier)

    run = _run_name(config, summary)
    datasets = ", ".join(map(str, summary["dataset"].dropna().unique())) or "—"
    paper_html = "".join(
        f'<h3>{html.escape(TABLE_TITLES[stem].format(forget_set=fs))}</h3>'
        f'<div class="scroll">{render_table(tables[stem], stem)}</div><p class="rule">{html.escape(TABLES[stem][1])} '
        f'<a href="tables/{stem}.tsv">tables/{stem}.tsv</a></p>'
        for stem in PAPER_TABLES)
    main_fig = "fig1_per_cell_audit"
    # Figure 7 opens the frontier section where there is one, else it stays among the figures
    front_fig = "fig7_frontier" if cheapest is not None and not cheapest.empty else None
    figure_html = "".join(render_figure(stem, png) for stem, png in figures.items()
                          if stem not in (main_fig, front_fig))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>scunlearn report: {html.escape(run)}</title><style>{CSS}</style></head><body>
<h1>scunlearn report: {html.escape(run)}</h1>
<p class="sub">dataset: {html.escape(datasets)} · {len(summary)} audited models ·
forget sets: {html.escape(', '.join(forget_set_order(summary)))} ·
seeds: {html.escape(', '.join(map(str, sorted(summary['seed'].unique()))))}</p>
{render_cell_type_labels(cell_type_scores, config)}
{render_findings(verdicts, summary)}
{render_verdicts(verdicts, _audit_setting(config, "alpha", 0.05))}
{render_frontier(cheapest, figures.get("fig7_frontier"))}
<nav><a href="#findings">Findings</a><a href="#verdicts">Verdicts</a><a href="#frontier">Cost</a>
<a href="#power">Audit power</a>
<a href="#comparison">Method comparison</a>
<a href="#guide">How to read this</a><a href="#paper">The paper's tables</a>
<a href="#figures">Figures</a><a href="#config">Config</a><a href="#provenance">Provenance</a></nav>
<h2 id="power">{html.escape(TABLE_TITLES['audit_power'])}</h2>{render_power(tables['audit_power'])}
{render_controls(controls, _audit_setting(config, "alpha", 0.05))}
<h2 id="comparison">{html.escape(TABLE_TITLES['method_comparison'])}</h2>
{render_comparison(tables['method_comparison'])}{render_dp_note(tables['method_comparison'])}
{render_claims_note(summary)}
{render_figure(main_fig, figures[main_fig])}
<h2 id="guide">How to read this</h2>{render_reading_guide(summary, _tolerance(config, summary), margin)}
<h2 id="paper">The paper's tables (the paper's band rule on its MLP attack)</h2>
<p class="rule">Their <i>paper status</i> is the paper's band rule on the mean MLP-attack AUC only, not this audit's
verdict: a status no seed's per-cell verdict shares is marked <span class="warn">≠ per-cell verdicts</span>. The
verdicts above are the audit's answer.</p>{paper_html}
<h2 id="figures">Figures</h2>{figure_html}
<h2 id="config">Config</h2>{render_config(config)}
<h2 id="provenance">Provenance</h2>{render_provenance(provenance)}
</body></html>
"""
    index = out / "index.html"
    write_with(index, lambda p: p.write_text(page, encoding="utf-8"))
    return index
