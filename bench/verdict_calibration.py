"""Calibration of the per-variant verdict (report/verdicts.tsv) on real trained VAEs.

    python bench/verdict_calibration.py [--config config/demo.yaml] [--models 16] [--posing 2]
                                        [--fractions 0.25 0.5 0.75] [--graded 4] [--draws 200]
                                        [--methods] [--cores 2] [--skip-training]

A verdict of SUCCESS is only worth something if a leaky model is not certified and a model as
good as retraining is. This bench trains the real thing and lets known models pose as a method
of ``--posing`` (K) models, judged exactly as a study judges a variant
(:func:`scunlearn.audit.variants.two_sample` at the study's margin, against ``n`` retrained
references drawn from the rest; n = the config's train + reference seeds; a margin given as a fraction
of the baseline's lead is resolved on each draw's own references and baselines, as a study of that
size resolves it — the lead in score-shift units depends on how many references calibrate it):

* **equivalence power**: K retrained models (never references in that draw) → SUCCESS rate;
  the variant-level test's false alarms (FAIL or OVER-UNLEARN) on the same draws;
* **false SUCCESS on baselines**: K baselines → SUCCESS rate (must be ~0) and FAIL rate;
* **graded membership**: VAEs retrained with a fraction (``--fractions``) of the forget cells put
  back, real models between retrain and baseline → SUCCESS and FAIL rates, and their true Δ (all
  their models against all retrained ones) in units of the margin: a group at or beyond the
  margin must be certified at most α of the time;
* **method-class null** (``--methods``): each configured method applied to *retrained* models
  (which never saw the forget cells) posing as that method: Δ should be ≈ 0; where it is not,
  the audit would measure the method's own artefact.

Models come from the workflow (run ``calibration-<config stem>``: ``--models`` baseline and
retrained seeds per forget set, as bench/audit_calibration.py trains them); graded models from
``scunlearn.stages.train.stage_train_ensemble`` on the forget set minus the put-back cells.
Draws share models, so a binomial interval over draws is too narrow; the intervals printed are
Clopper–Pearson over the number of *disjoint* posing groups the pool holds (models // K), a
conservative effective sample size. Results go to bench/out/verdict_calibration/.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
try:
    import scunlearn  # noqa: F401
except ImportError:  # not pip-installed: use the source tree
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
from audit_calibration import bench_config, model_files  # noqa: E402

from scunlearn.audit.assemble import study_stats  # noqa: E402
from scunlearn.audit.attacks import resolve_attacks  # noqa: E402
from scunlearn.audit.attacks.per_cell import cell_statistic, is_type_level  # noqa: E402
from scunlearn.audit.calibrated import per_cell_audit  # noqa: E402
from scunlearn.audit.controls import rate_ci  # noqa: E402
from scunlearn.audit.variants import resolve_margin, two_sample  # noqa: E402
from scunlearn.configfile import check_config_files  # noqa: E402
from scunlearn.io import read_cells, read_json, write_json  # noqa: E402
from scunlearn.vae.cellstats import read_cell_stats  # noqa: E402

GRADED_SEED0 = 500  # seeds of the graded models (apart from the study's)


def graded_paths(out: Path, fs: str, frac: float, seeds: list[int]) -> dict:
    stem = out / "graded" / fs / f"in{int(round(100 * frac))}"
    return {k: [str(stem / f"seed{s}.{ext}") for s in seeds]
            for k, ext in (("model", "pt"), ("history", "history.tsv"), ("cells", "cells.npz"))}


def train_graded(cfg: dict, run_dir: Path, fs: str, frac: float, seeds: list[int]) -> list[str]:
    """VAEs retrained with ``frac`` of forget set ``fs``'s cells put back (the same cells for every seed)."""
    from scunlearn.stages.train import stage_train_ensemble

    paths = graded_paths(run_dir, fs, frac, seeds)
    if all(Path(p).exists() for p in paths["cells"]):
        return paths["cells"]
    forget = read_json(run_dir / "splits" / f"{fs}.json")["forget"]
    rng = np.random.default_rng(int(round(1000 * frac)))
    back = set(rng.choice(forget, int(round(frac * len(forget))), replace=False).tolist())
    sub = run_dir / "graded" / fs / f"forget_in{int(round(100 * frac))}.json"
    write_json({"forget": [c for c in forget if c not in back]}, sub)
    train = {k: v for k, v in cfg["train"].items() if k not in ("seeds", "ensemble", "cuda_graphs")}
    stage_train_ensemble({"adata": str(run_dir / "data/adata.h5ad"), "split": str(run_dir / "splits/split.json"),
                          "forget": str(sub)}, paths,
                         {"kind": "retrain", "seeds": seeds, "model": cfg["model"], "train": train,
                          "device": cfg.get("device", "cpu"), "cuda_graphs": False}, 2)
    return paths["cells"]


def method_null(cfg: dict, run_dir: Path, fs: str, seeds: list[int]) -> dict[str, list[str]]:
    """Each comparable configured method applied to retrained models of ``fs``: variant -> .cells.npz paths."""
    from scunlearn.methods import expand_variants, get_method
    from scunlearn.stages.unlearn import stage_unlearn

    out = {}
    variants = expand_variants(cfg["methods"], list(cfg["forget_sets"]), int(cfg["train"]["max_epochs"]))
    for variant, v in variants.items():
        spec = get_method(v["method"])
        if fs not in v.get("forget_sets", [fs]) or not spec.audit_comparable or spec.needs:
            continue
        stems = [run_dir / "on_retrain" / variant / fs / f"seed{s}" for s in seeds]
        paths = {"model": [f"{t}.pt" for t in stems], "trajectory": [f"{t}.tsv" for t in stems],
                 "cells": [f"{t}.cells.npz" for t in stems]}
        if not all(Path(p).exists() for p in paths["cells"]):  # one job of K members, as the workflow runs it
            stage_unlearn({"adata": str(run_dir / "data/adata.h5ad"), "split": str(run_dir / "splits/split.json"),
                           "forget": str(run_dir / "splits" / f"{fs}.json"),
                           "baseline": [str(run_dir / "models/retrain" / fs / f"seed{s}.pt") for s in seeds]},
                          paths, {"variant": variant, "method": v["method"], "params": v.get("params", {}),
                                  "seeds": seeds, "device": cfg.get("device", "cpu")}, 2)
        out[variant] = paths["cells"]
    return out


def _audit_kwargs(st: dict, pc: dict, kind: str) -> dict:
    """The per-cell audit's settings as the study's audit job passes them (the margin is applied later)."""
    return {"strata": st["types"] if pc["centre_by_cell_type"] else None, "test": pc["test"],
            "measure": pc["measure"], "against": pc["negatives"], "type_level": is_type_level(kind),
            "n0": pc["shrinkage"], "margin": 1.0}


def values(targets: dict, refs: dict, bases: dict, st: dict, pc: dict, kind: str) -> dict[str, float]:
    """Each target model's value of the audit's measure against the references, as the audit computes it."""
    kw = _audit_kwargs(st, pc, kind)
    out = {}
    for name, t in targets.items():
        res = per_cell_audit(t, refs, bases, st["pos"], st["negatives"], self_name=name if name in bases else None,
                             **kw)
        out[name] = res["delta_vs_retrain"] + float(np.mean(res["pc_null"]))
    return out


def null_values(refs: dict, bases: dict, st: dict, pc: dict, kind: str) -> np.ndarray:
    """The references' leave-one-out values (what an audit record's ``pc_null`` holds)."""
    any_target = next(iter(bases.values()))
    kw = _audit_kwargs(st, pc, kind)
    return np.asarray(per_cell_audit(any_target, refs, {}, st["pos"], st["negatives"], **kw)["pc_null"], dtype=float)


def judge(v: np.ndarray, null: np.ndarray, margin: float, alpha: float) -> str:
    r = two_sample(v, null, margin, level=1 - alpha)
    if r["p"] < alpha:
        return "FAIL" if r["delta"] > 0 else "OVER-UNLEARN"
    return "SUCCESS" if r["tost_p"] < alpha else "INCONCLUSIVE"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--models", type=int, default=16, help="baseline and retrained models per forget set")
    ap.add_argument("--posing", type=int, default=2, help="models posing as one method variant (K)")
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.25, 0.5, 0.75],
                    help="shares of the forget cells put back into graded-membership models")
    ap.add_argument("--graded", type=int, default=4, help="graded models per fraction and forget set")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--methods", action="store_true", help="also the method-class null (methods on retrained models)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--skip-training", action="store_true",
                    help="skip the workflow's models (already trained); graded models and method runs are reused")
    a = ap.parse_args()

    study_cfg = check_config_files([str(ROOT / a.config)], ROOT / "config/schema.yaml")  # schema defaults filled
    cfg = bench_config(study_cfg, Path(a.config).stem, a.models, [])
    cfg["methods"] = study_cfg.get("methods", {})
    outdir = ROOT / "bench/out/verdict_calibration"
    outdir.mkdir(parents=True, exist_ok=True)
    cfg_path = outdir / f"{cfg['run']}.yaml"
    cfg_path.write_text(yaml.safe_dump({**cfg, "methods": {}}, sort_keys=False))
    files = model_files(cfg)
    run_dir = ROOT / "results" / cfg["run"]
    if not a.skip_training:
        targets = sorted({p for f in files.values() for k, v in f.items() if not k.startswith("names")
                          for p in ([v] if isinstance(v, str) else v)})
        subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", str(a.cores), "--quiet", "rules",
                        "--configfile", str(cfg_path)], cwd=ROOT, check=True)

    audit = study_cfg.get("audit", {})
    pc = resolve_attacks(audit.get("attacks", {"per_cell": {}}))["per_cell"]
    alpha = float(audit.get("alpha", 0.05))
    n_study = len(study_cfg["train"]["seeds"]) + len(audit.get("reference_seeds", []))
    K = a.posing
    rng = np.random.default_rng(0)
    rows, method_rows = [], []
    for fs, paths in files.items():
        spec = study_cfg["forget_sets"][fs].get("equivalence_margin", audit.get("equivalence_margin", 0.25))
        kind = study_cfg["forget_sets"][fs]["kind"]
        st = study_stats({k: (str(ROOT / v) if isinstance(v, str) else
                              [str(ROOT / p) if not k.startswith("names") else p for p in v])
                          for k, v in paths.items()}, pc["statistic"])
        adata = read_cells(ROOT / paths["adata"])

        def load(cells, prefix, names=adata.obs_names):
            return {f"{prefix}/{i}": cell_statistic(read_cell_stats(p, names), pc["statistic"])
                    for i, p in enumerate(cells)}

        graded = {}
        for frac in a.fractions:
            seeds = list(range(GRADED_SEED0, GRADED_SEED0 + a.graded))
            cells = train_graded(cfg, run_dir, fs, frac, seeds)  # trained once, then reused
            graded[frac] = load(cells, f"graded{frac}")
        on_retrain = {}
        if a.methods:
            mseeds = ([int(s) for s in cfg["train"]["seeds"]] + [int(s) for s in cfg["audit"]["reference_seeds"]])[:K]
            for variant, cells in method_null(cfg, run_dir, fs, mseeds).items():
                on_retrain[variant] = (load(cells, variant), {f"retrain/seed{s}" for s in mseeds})

        R, B = sorted(st["retrain"]), sorted(st["baselines"])
        # the margin of a study of n retrained models, from its baseline's lead: resolved on all models once
        full_null = null_values(st["retrain"], st["baselines"], st, pc, kind)
        gap = float(np.mean(list(values(st["baselines"], st["retrain"], st["baselines"], st, pc, kind).values()))
                    - full_null.mean())
        margin, margin_of_gap = resolve_margin(spec, gap)
        true_delta = {frac: float(np.mean(list(values(g, st["retrain"], st["baselines"], st, pc, kind).values()))
                                  - full_null.mean()) for frac, g in graded.items()}
        counts: dict[str, dict[str, int]] = {}
        margins: list[float] = []
        margin_all = margin  # resolved on every model of the pool (the graded models' true Δ is in its units)
        for _ in range(a.draws):
            refs_n = sorted(rng.choice(R, min(n_study, len(R) - K), replace=False))
            refs = {r: st["retrain"][r] for r in refs_n}
            bases_n = sorted(rng.choice(B, min(n_study, len(B) - K), replace=False))
            bases = {b: st["baselines"][b] for b in bases_n}
            null = null_values(refs, bases, st, pc, kind)
            if isinstance(spec, dict):  # a fraction of the lead: resolved on this draw's study, as a study does
                lead = float(np.mean(list(values(bases, refs, bases, st, pc, kind).values())) - null.mean())
                margin = resolve_margin(spec, lead)[0]
                margins.append(margin)
            groups = {"retrained (equivalence power)": {r: st["retrain"][r] for r in
                                                        rng.choice([r for r in R if r not in refs], K, replace=False)},
                      "baselines": {b: st["baselines"][b] for b in
                                    rng.choice([b for b in B if b not in bases], K, replace=False)}}
            for frac, g in graded.items():
                groups[f"graded: {int(100 * frac)}% put back"] = {n: g[n] for n in
                                                                 rng.choice(sorted(g), min(K, len(g)), replace=False)}
            for name, group in groups.items():
                v = np.array(list(values(group, refs, bases, st, pc, kind).values()))
                c = counts.setdefault(name, {})
                verdict = judge(v, null, margin, alpha)
                c[verdict] = c.get(verdict, 0) + 1
        pools = {"retrained (equivalence power)": len(R) - n_study, "baselines": len(B) - n_study,
                 **{f"graded: {int(100 * f)}% put back": a.graded for f in graded}}
        for name, c in counts.items():
            units = max(pools[name] // K, 1)
            row = {"forget_set": fs, "posing": name, "K": K, "n_refs": min(n_study, len(R) - K),
                   "margin": float(np.mean(margins)) if margins else margin, "margin_of_gap": margin_of_gap,
                   "draws": a.draws, "disjoint_groups": units}
            for verdict in ("SUCCESS", "FAIL", "OVER-UNLEARN", "INCONCLUSIVE"):
                rate = c.get(verdict, 0) / a.draws
                lo, hi = rate_ci(round(rate * units), units)
                row.update({f"{verdict.lower()}_rate": rate, f"{verdict.lower()}_ci_high": hi})
            frac = next((f for f in graded if name.startswith(f"graded: {int(100 * f)}%")), None)
            row["true_delta_over_margin"] = true_delta[frac] / margin_all if frac is not None else (
                1.0 / margin_of_gap if name == "baselines" else 0.0)
            rows.append(row)
        for variant, (g, used) in on_retrain.items():
            refs = {r: v for r, v in st["retrain"].items() if r not in used}
            null = null_values(refs, st["baselines"], st, pc, kind)
            v = np.array(list(values(g, refs, st["baselines"], st, pc, kind).values()))
            r = two_sample(v, null, margin_all, level=1 - alpha)
            method_rows.append({"forget_set": fs, "variant": variant, "K": len(v), "delta": r["delta"],
                                "delta_ci_low": r["delta_ci_low"], "delta_ci_high": r["delta_ci_high"],
                                "delta_over_margin": r["delta"] / margin_all, "p": r["p"],
                                "artefact": bool(r["p"] < alpha)})
    table = pd.DataFrame(rows)
    table.to_csv(outdir / f"{cfg['run']}.rates.tsv", sep="\t", index=False)
    cols = ["forget_set", "posing", "K", "n_refs", "margin", "margin_of_gap", "true_delta_over_margin",
            "success_rate", "success_ci_high", "fail_rate", "over-unlearn_rate", "disjoint_groups"]
    print(f"alpha {alpha}; {a.models} baseline and retrained models per forget set; studies of up to {n_study} "
          f"retrained references (n_refs: those left beside the K = {K} posing), {a.draws} draws; CI upper bounds "
          "over disjoint groups")
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if method_rows:
        mt = pd.DataFrame(method_rows)
        mt.to_csv(outdir / f"{cfg['run']}.method_null.tsv", sep="\t", index=False)
        print("\nmethod-class null: each method applied to retrained models (never saw the forget cells)")
        print(mt.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
