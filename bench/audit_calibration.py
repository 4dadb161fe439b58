"""Calibration of the per-cell audit on real trained VAEs: false alarms on retrained models, detection of baselines.

    python bench/audit_calibration.py [--config config/demo.yaml] [--models 12] [--extra-sizes 100]
                                      [--study-models 8] [--draws 20] [--cores 2]

The per-cell test is only worth its verdicts if it spares models that never saw the forget
cells and catches the model that did. A test checked only on data drawn from its own
assumptions proves neither, so this bench trains the real thing with the workflow itself:
``--models`` baseline VAEs and as many retrained VAEs per forget set (the config's forget
sets plus random sets of ``--extra-sizes`` cells), the study's data and recipe unchanged (a
copy of the config under run name ``calibration-<config stem>``, audit.reference_seeds
extended, no methods; Snakemake reuses what exists).

Then each model is audited as a pseudo-method against the others, exactly as a study does
(:func:`scunlearn.audit.controls.control_trials`): in each of ``--draws`` draws, a study of
``--study-models`` baseline and retrained models is picked at random and each of its
models is audited leave-one-out. Printed per forget set and candidate test: the false-alarm
rate (retrained models rejected at alpha) and the detection rate (baselines ABOVE at alpha)
with 95% Clopper–Pearson intervals over the distinct models, and the spread of the
retrained models' AUCs. Results go to bench/out/audit_calibration/.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
try:
    import scunlearn  # noqa: F401
except ImportError:  # not pip-installed: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

import pandas as pd  # noqa: E402

from scunlearn.audit.assemble import study_stats  # noqa: E402
from scunlearn.audit.attacks import resolve_attacks  # noqa: E402
from scunlearn.audit.attacks.per_cell import is_type_level  # noqa: E402
from scunlearn.audit.controls import calibration_rates, control_trials  # noqa: E402

#: (test, measure, negative set) measured; the first is the audit's default
CANDIDATES = [("spread", "shift", "all"), ("spread", "auc", "all"), ("spread", "shift", "matched"),
              ("spread", "auc", "matched"), ("delong", "auc", "matched"), ("delong", "auc", "all")]


def bench_config(cfg: dict, name: str, n_models: int, extra_sizes: list[int]) -> dict:
    """The study's config with ``n_models`` seeds of each model, extra random forget sets and no methods."""
    cfg = yaml.safe_load(yaml.safe_dump(cfg))
    seeds = [int(s) for s in cfg["train"]["seeds"]]
    cfg["run"] = f"calibration-{name}"
    cfg.setdefault("audit", {})["reference_seeds"] = list(range(100, 100 + max(n_models - len(seeds), 0)))
    for n in extra_sizes:
        cfg["forget_sets"][f"random{n}"] = {"kind": "random", "n": int(n)}
    cfg["methods"] = {}
    return cfg


def model_files(cfg: dict) -> dict:
    """Per forget set, the paths study_stats reads (every seed's per-cell statistics)."""
    out = f"results/{cfg['run']}"
    seeds = [int(s) for s in cfg["train"]["seeds"]] + [int(s) for s in cfg["audit"]["reference_seeds"]]
    files = {}
    for f in cfg["forget_sets"]:
        files[f] = {
            "adata": f"{out}/data/adata.h5ad", "split": f"{out}/splits/split.json",
            "forget": f"{out}/splits/{f}.json", "matched": f"{out}/splits/matched_{f}.json",
            "ref_retrain": [f"{out}/models/retrain/{f}/seed{s}.cells.npz" for s in seeds],
            "ref_baseline": [f"{out}/models/baseline/seed{s}.cells.npz" for s in seeds],
            "names_retrain": [f"retrain/seed{s}" for s in seeds],
            "names_baseline": [f"baseline/seed{s}" for s in seeds],
        }
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--models", type=int, default=12, help="baseline and retrained models per forget set")
    ap.add_argument("--extra-sizes", type=int, nargs="*", default=[100], help="random forget sets added")
    ap.add_argument("--study-models", type=int, default=None,
                    help="models of each kind in one simulated study (default: the config's seeds)")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--skip-training", action="store_true", help="evaluate what is already trained")
    a = ap.parse_args()

    cfg = yaml.safe_load((ROOT / a.config).read_text())
    cfg = bench_config(cfg, Path(a.config).stem, a.models, a.extra_sizes)
    outdir = ROOT / "bench/out/audit_calibration"
    outdir.mkdir(parents=True, exist_ok=True)
    cfg_path = outdir / f"{cfg['run']}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    files = model_files(cfg)
    if not a.skip_training:
        targets = sorted({p for f in files.values() for k, v in f.items() if not k.startswith("names")
                          for p in ([v] if isinstance(v, str) else v)})
        # targets first: --configfile takes every argument after it
        subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", str(a.cores), "--quiet", "rules",
                        "--configfile", str(cfg_path)], cwd=ROOT, check=True)

    study_n = a.study_models or len(cfg["train"]["seeds"]) + len(yaml.safe_load(
        (ROOT / a.config).read_text()).get("audit", {}).get("reference_seeds", []))
    audit = cfg.get("audit", {})
    pc = resolve_attacks(audit.get("attacks", {"per_cell": {}}))["per_cell"]
    alpha, margin = float(audit.get("alpha", 0.05)), float(audit.get("equivalence_margin", 0.05))
    rows, all_trials = [], []
    for fs, paths in files.items():
        st = study_stats({k: (str(ROOT / v) if isinstance(v, str) else
                              [str(ROOT / p) if not k.startswith("names") else p for p in v])
                          for k, v in paths.items()}, pc["statistic"])
        kind = cfg["forget_sets"][fs]["kind"]
        for test, measure, against in CANDIDATES:
            trials = control_trials(st["retrain"], st["baselines"], st["pos"], st["negatives"],
                                    strata=st["types"] if pc["centre_by_cell_type"] else None,
                                    n_models=study_n, draws=a.draws, seed=0, test=test, measure=measure,
                                    against=against, type_level=is_type_level(kind), alpha=alpha, margin=margin,
                                    n0=pc["shrinkage"])
            trials.insert(0, "forget_set", fs)
            trials.insert(1, "test", f"{test}/{measure}/{against}")
            all_trials.append(trials)
            null = trials[trials["kind"] == "retrain"]
            rows.append({"forget_set": fs, "n_forget": len(st["pos"]), "n_negatives": len(st["negatives"][against]),
                         "test": f"{test}/{measure}/{against}", "study_models": study_n,
                         **calibration_rates(trials, alpha),
                         "retrain_auc_sd": float(null.groupby("model")["pc_auc"].mean().std()),
                         "retrain_shift_sd": float(null.groupby("model")["pc_shift"].mean().std()),
                         "baseline_delta": float(trials.loc[trials["kind"] == "baseline", "delta"].mean())})
    table = pd.DataFrame(rows)
    pd.concat(all_trials).to_csv(outdir / f"{cfg['run']}.trials.tsv", sep="\t", index=False)
    table.to_csv(outdir / f"{cfg['run']}.rates.tsv", sep="\t", index=False)
    cols = ["forget_set", "n_forget", "n_negatives", "test", "false_alarm_rate", "false_alarm_ci_low",
            "false_alarm_ci_high", "detection_rate", "detection_ci_low", "detection_ci_high", "false_alarm_models",
            "retrain_auc_sd", "retrain_shift_sd", "baseline_delta"]
    print(f"alpha {alpha}; {a.models} models of each kind per forget set; studies of {study_n} drawn {a.draws}x")
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
