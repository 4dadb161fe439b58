"""One verdict per method variant and forget set, from all its unlearned models (``report/verdicts.tsv``).

One model cannot be shown closer to retrain than the retrained models' own spread; a
method's K unlearned models can. For each (forget set, variant) the K models' values of the
per-cell audit's measure are compared with the retrained models' leave-one-out values (the
null: what a model that never saw the forget cells gets):

* Δ = mean of the K values − mean of the n null values; a two-sample Student t with the
  pooled SD of both groups and K + n − 2 degrees of freedom. Every unlearned model is scored
  against the same n retrained references, whose shared mean moves all K values together,
  so Var(Δ) = σ² (1/K + 1/n).
* The null values' SD overstates σ by n/(n − 1): a leave-one-out value is
  x_i − mean_{j≠i} x_j = n/(n − 1) (x_i − x̄), so the values sum to ~0 and spread wider
  than a fresh model's. It is corrected by (n − 1)/n (:func:`loo_sd`).
* The margin is absolute (the measure's units) or a fraction of the baseline's lead
  (``{of_baseline_gap: f}``: "indistinguishable from retrain to within f of what the
  baseline leaks"); the study's *resolution* is the smallest margin at which K retrained
  models would be certified with 80% probability (:func:`resolution`), in both units.
* Holm's step-down rule over the variants of a forget set, separately for the difference
  test (FAIL / OVER-UNLEARN) and for equivalence (SUCCESS): the family-wise error of each
  kind of claim is at most α per forget set.
* ``retrain (as a method)``: the train seeds' retrained models posing as a method against
  the other retrained models, judged the same way: the equivalence control. SUCCESS for a
  variant needs the study's controls *and* this one to pass (where the study has at least
  two other retrained models), since a study that cannot certify retrained models cannot
  certify anything.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
from scipy import special

log = logging.getLogger(__name__)

#: verdicts.tsv's columns, in order (the README's table lists them)
VERDICT_COLUMNS = [
    "forget_set", "variant", "method", "n_models", "n_null", "delta", "delta_se", "delta_ci_low", "delta_ci_high",
    "p", "p_holm", "tost_p", "tost_p_holm", "margin", "margin_of_gap", "resolution", "resolution_of_gap",
    "baseline_gap", "null_sd", "gap_closed", "verdict", "note",
]

#: the pseudo-variant of the equivalence control
RETRAIN_AS_METHOD = "retrain (as a method)"
#: power at which the resolution is stated
RESOLUTION_POWER = 0.8


def loo_sd(null) -> float:
    """SD of a fresh model's value, from n leave-one-out values: their SD × (n − 1)/n (module docstring)."""
    null = np.asarray(null, dtype=float)
    n = len(null)
    return float(null.std(ddof=1) * (n - 1) / n) if n > 1 else float("nan")


def two_sample(values, null, margin: float, level: float = 0.95, null_is_loo: bool = True) -> dict:
    """Δ = mean(values) − mean(null) with a pooled-SD Student t: CI, two-sided p, TOST p at ``margin``.

    ``null_is_loo``: the null values are leave-one-out values, whose SD is corrected (:func:`loo_sd`).
    """
    v, z = np.asarray(values, dtype=float), np.asarray(null, dtype=float)
    k, n = len(v), len(z)
    nan = float("nan")
    if k == 0 or n < 2:
        return {"delta": nan, "delta_se": nan, "df": nan, "delta_ci_low": nan, "delta_ci_high": nan,
                "p": nan, "tost_p": nan}
    s0 = loo_sd(z) if null_is_loo else float(z.std(ddof=1))
    var = ((k - 1) * (v.var(ddof=1) if k > 1 else 0.0) + (n - 1) * s0**2) / (k + n - 2)
    se = math.sqrt(var * (1 / k + 1 / n))
    df = float(k + n - 2)
    delta = float(v.mean() - z.mean())
    t = special.stdtrit(df, 0.5 + level / 2)
    if se == 0:
        p = 0.0 if delta != 0 else 1.0
        tost = (0.0 if abs(delta) < margin else 1.0) if np.isfinite(margin) else nan
    else:
        p = float(2 * special.stdtr(df, -abs(delta) / se))
        tost = (float(max(special.stdtr(df, -(delta + margin) / se), special.stdtr(df, -(margin - delta) / se)))
                if np.isfinite(margin) else nan)
    return {"delta": delta, "delta_se": se, "df": df, "delta_ci_low": delta - t * se,
            "delta_ci_high": delta + t * se, "p": p, "tost_p": tost}


def resolution(sd: float, k: int, n: int, alpha: float = 0.05, power: float = RESOLUTION_POWER) -> float:
    """The smallest margin at which TOST at ``alpha`` certifies K models of true Δ = 0 with probability ``power``:
    (t_{1−α} + t_{1−(1−power)/2}) · σ √(1/K + 1/n), on K + n − 2 degrees of freedom."""
    if k < 1 or n < 2 or not np.isfinite(sd):
        return float("nan")
    df = k + n - 2
    t = special.stdtrit(df, 1 - alpha) + special.stdtrit(df, 1 - (1 - power) / 2)
    return float(t * sd * math.sqrt(1 / k + 1 / n))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted in the family)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def resolve_margin(spec, baseline_gap: float) -> tuple[float, float]:
    """(margin in the measure's units, margin as a fraction of the baseline's lead) from the config value:
    a number (absolute) or ``{of_baseline_gap: f}``. NaN where the baseline shows no lead to take a fraction of."""
    gap_ok = np.isfinite(baseline_gap) and baseline_gap > 0
    if isinstance(spec, dict):
        f = float(spec["of_baseline_gap"])
        return (f * baseline_gap if gap_ok else float("nan")), f
    m = float(spec)
    return m, (m / baseline_gap if gap_ok else float("nan"))


def spec_for(margin, forget_set: str):
    """One forget set's margin spec, from a mapping forget set → spec (each set's own) or the one spec for all."""
    if isinstance(margin, dict) and "of_baseline_gap" not in margin:
        return margin[forget_set]
    return margin


def record_margin(spec) -> float:
    """The margin an audit record's own TOST uses: the config's number, or NaN for a fraction of the baseline's
    lead, which only the aggregate (seeing every model) can resolve; it then redoes each model's TOST."""
    return float("nan") if isinstance(spec, dict) else float(spec)


def study_margins(records: list[dict], spec) -> dict[str, tuple[float, float, float]]:
    """forget set → (margin, margin as a fraction of the baseline's lead, the lead), as :func:`variant_verdicts`
    resolves them: the lead is the baseline models' mean value minus the retrained models' null mean.
    ``spec``: one margin spec, or a mapping forget set → spec (:func:`spec_for`)."""
    df = pd.DataFrame(records)
    df["value"] = [record_value(r) for r in records]
    out = {}
    for fs, g in df.groupby("forget_set", sort=False):
        null = _null(g)
        base = g.loc[g["method"] == "baseline", "value"].to_numpy(dtype=float)
        gap = float(np.nanmean(base) - null.mean()) if null is not None and len(base) else float("nan")
        out[fs] = (*resolve_margin(spec_for(spec, fs), gap), gap)
    return out


def _null(g: pd.DataFrame) -> np.ndarray | None:
    """The retrained models' leave-one-out values on a forget set (a baseline record's ``pc_null``: all n)."""
    nulls = [r for r in g.loc[g["method"] == "baseline", "pc_null"] if isinstance(r, list) and len(r) > 1]
    return np.asarray(nulls[0], dtype=float) if nulls else None


def record_value(rec: dict) -> float:
    """A model's value of the measure its audit compared: Δ against retrain + the null's mean."""
    null = rec.get("pc_null")
    if not isinstance(null, (list, tuple, np.ndarray)) or len(null) == 0:
        return float("nan")
    return float(rec["delta_vs_retrain"]) + float(np.mean(null))


def _verdict(method: str, comparable: bool, p_holm: float, tost_holm: float, delta: float, alpha: float,
             ok: bool) -> str:
    if not comparable:
        return "NOT-COMPARABLE"
    if np.isfinite(p_holm) and p_holm < alpha:
        return "FAIL" if delta > 0 else "OVER-UNLEARN"
    if np.isfinite(tost_holm) and tost_holm < alpha and ok:
        return "SUCCESS"
    return "INCONCLUSIVE"


def variant_verdicts(records: list[dict], margin_spec, alpha: float, controls_ok: dict[str, bool],
                     model_seeds: list[int] | None = None, all_seeds: list[int] | None = None) -> pd.DataFrame:
    """verdicts.tsv: one row per (forget set, variant), plus the ``retrain (as a method)`` control (module docstring).

    ``records``: the audit records (one per model); ``margin_spec``: a number, ``{of_baseline_gap: f}``, or a
    mapping forget set → either (:func:`spec_for`); ``controls_ok``: forget set → the study's
    controls passed; ``model_seeds`` / ``all_seeds``: the train seeds and every seed (reference
    seeds included), in the order of each record's ``pc_null`` (the retrained models' leave-one-out
    values), for the equivalence control.
    """
    from scunlearn.audit.verdict import comparable

    df = pd.DataFrame(records)
    df["value"] = [record_value(r) for r in records]
    margins = study_margins(records, margin_spec)
    rows = []
    for fs, g in df.groupby("forget_set", sort=False):
        null = _null(g)
        if null is None:
            log.warning("forget set %s: no baseline record with the retrained models' null values; no "
                        "variant verdicts", fs)
            continue
        margin, margin_of_gap, gap = margins[fs]
        sd = loo_sd(null)
        family = []
        for variant, v in g[~g["method"].isin(["baseline", "retrain"])].groupby("variant", sort=True):
            method = str(v["method"].iloc[0])
            res = two_sample(v["value"].dropna(), null, margin, level=1 - alpha)
            k = int(v["value"].notna().sum())
            family.append({"forget_set": fs, "variant": variant, "method": method, "n_models": k,
                           "n_null": len(null), **res, "margin": margin, "margin_of_gap": margin_of_gap,
                           "resolution": resolution(sd, k, len(null), alpha),
                           "baseline_gap": gap, "null_sd": sd, "_comparable": comparable(method),
                           "_centred_on_all": centred_on_all(v)})
        # the equivalence control: the train seeds' retrained models against the other retrained models
        eq = _retrain_as_method(fs, null, margin, gap, alpha, model_seeds, all_seeds)
        fam = pd.DataFrame(family)
        if len(fam):
            cmp_rows = fam["_comparable"].to_numpy(dtype=bool)
            fam["p_holm"] = np.nan
            fam["tost_p_holm"] = np.nan
            fam.loc[cmp_rows, "p_holm"] = holm(fam.loc[cmp_rows, "p"])
            fam.loc[cmp_rows, "tost_p_holm"] = holm(fam.loc[cmp_rows, "tost_p"])
        eq_ok, eq_note = True, ""
        if eq is not None:
            eq["p_holm"], eq["tost_p_holm"] = eq["p"], eq["tost_p"]
            eq_ok = bool(np.isfinite(eq["tost_p"]) and eq["tost_p"] < alpha)
            eq["verdict"] = "SUCCESS" if eq_ok and not (eq["p"] < alpha) else (
                "FAIL" if eq["p"] < alpha else "INCONCLUSIVE")
            eq["note"] = ("equivalence control passed: this study can certify retrained models" if eq_ok else
                          "equivalence control failed: this study cannot certify even retrained models at this "
                          "margin, so no variant is SUCCESS")
            if not eq_ok:
                eq_note = "no SUCCESS: the equivalence control failed"
        ok = bool(controls_ok.get(fs, False))
        for r in fam.to_dict("records") if len(fam) else []:
            r["verdict"] = _verdict(r["method"], r["_comparable"], r["p_holm"], r["tost_p_holm"], r["delta"],
                                    alpha, ok and eq_ok)
            notes = []
            if not r["_comparable"]:
                notes.append("the retrained single VAEs are not of this method's model class")
            shown = r["_comparable"] and np.isfinite(r["tost_p_holm"]) and r["tost_p_holm"] < alpha
            if shown and r["verdict"] != "SUCCESS":  # equivalence shown, yet the study may not say so
                notes.append("no SUCCESS: the study's controls failed" if not ok else eq_note)
            if r["_centred_on_all"]:
                notes.append("forget cells of types with too few unseen cells to centre on their own were centred on "
                             f"all audit cells ({r['_centred_on_all']}): a seed's shift on those types is not removed")
            if np.isfinite(r["margin"]) and np.isfinite(r["resolution"]) and r["margin"] < r["resolution"]:
                notes.append(f"margin {r['margin']:.3g} is below this study's resolution {r['resolution']:.3g} for "
                             f"{r['n_models']} models: SUCCESS is unlikely even for a perfect method")
            r["note"] = "; ".join(notes)
            rows.append(r)
        if eq is not None:
            rows.append(eq)
    out = pd.DataFrame(rows, columns=[*VERDICT_COLUMNS, "_comparable"]).drop(columns="_comparable")
    lead = out["baseline_gap"].where(out["baseline_gap"] > 0)
    out["gap_closed"] = 1 - out["delta"] / lead
    out["resolution_of_gap"] = out["resolution"] / lead
    return out[VERDICT_COLUMNS]


def centred_on_all(g: pd.DataFrame) -> str:
    """The forget cells' types its audit records centred on all audit cells (``pc_centred_on_all``), as
    ``type (n unseen cells)``; empty when every type had enough cells of its own."""
    seen: dict[str, int] = {}
    for d in g.get("pc_centred_on_all", pd.Series(dtype=object)):
        if isinstance(d, dict):
            seen.update(d)
    return ", ".join(f"{k} ({n} unseen cells)" for k, n in sorted(seen.items()))


def _retrain_as_method(fs: str, null: np.ndarray, margin: float, gap: float, alpha: float,
                       model_seeds, all_seeds) -> dict | None:
    """Retrained models posing as a method against the other retrained models: those of ``model_seeds`` (as many
    as a variant has), or the first half of the seeds where fewer than two would be left to compare with.

    From the leave-one-out values of all n: scaled by (n − 1)/n each is x_i − x̄ (module docstring), so the
    two groups' difference is that of their models' values, and a plain pooled two-sample t applies.
    """
    n = len(null)
    if not all_seeds or len(all_seeds) != n or n < 3:
        return None
    posing = [i for i, s in enumerate(all_seeds) if s in set(model_seeds or [])]
    if not posing or n - len(posing) < 2:
        posing = list(range(n // 2))
    rest = [i for i in range(n) if i not in posing]
    v = null * (n - 1) / n
    res = two_sample(v[posing], v[rest], margin, level=1 - alpha, null_is_loo=False)
    sd = float(v[rest].std(ddof=1))
    return {"forget_set": fs, "variant": RETRAIN_AS_METHOD, "method": "retrain",
            "n_models": len(posing), "n_null": len(rest), **res, "margin": margin,
            "margin_of_gap": margin / gap if gap > 0 else float("nan"),
            "resolution": resolution(sd, len(posing), len(rest), alpha), "baseline_gap": gap, "null_sd": sd}

