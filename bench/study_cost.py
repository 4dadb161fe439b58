#!/usr/bin/env python
"""Expected cost of a whole study: one epoch and one audit timed at full size, times the DAG's jobs.

What it does, on this machine, in one run:

1. counts the jobs per rule of the study's DAG (``snakemake -n --forceall``);
2. simulates a count matrix of the study's size (``--cells``, default the config's
   simulated size or 33,000 for PBMC; genes = ``preprocess.n_hvg``), the matrix the
   models see after preprocessing;
3. runs the real stages in-process on it (``scunlearn.stages``): split, one forget set,
   **one training epoch** of the config's model (``fit`` with ``max_epochs=1``, with the
   rule's threads), and with ``train.ensemble`` (the default) **one epoch of the batched
   ensemble** a baseline / retrain job trains (``fit_ensemble``, train.seeds + reference seeds),
   matched negatives and **one audit** (``stage_audit``, 1 thread);
4. adds the per-job process start-up (imports), timed in a fresh interpreter, and
   multiplies by the job counts: baseline/retrain = epochs x epoch (``max_epochs``, an
   upper bound: early stopping ends most runs sooner; the lower bound uses
   ``kl_warmup_epochs + patience + 1``), unlearn = retrain x a per-method factor
   (``--calibrate RESULTS_DIR``: median unlearn / retrain wall time per variant from a
   finished run's benchmarks, else 1), audit = one start-up + the audit measured here
   times the seeds (one audit job audits every seed of a model);
5. prints CPU-hours and the wall time on N cores (max of the critical path and
   core-seconds / N). GPU: not measured unless run where one is present (``--device``).
   There it prints the GPU jobs' hours one after another, and (``--share``, default 8) with
   n jobs sharing the GPU (``snakemake --resources gpu=n``): n fresh processes each train a
   lone model at once, and their epoch against one alone gives the slowdown of the lone-model
   jobs (unlearning, SISA's shards), which are launch-bound and overlap.

Usage (from the repository root)::

    python bench/study_cost.py --configfile config/config.yaml
    python bench/study_cost.py --configfile config/config.yaml --calibrate results/demo --cores 2,8,32
    python bench/study_cost.py --configfile config/demo.yaml      # the demo, as a check against a real run
    python bench/study_cost.py --configfile config/config.yaml --device cuda --share 8,16 --calibrate results/demo
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import scunlearn  # noqa: F401
except ImportError:  # not pip-installed: use the source tree
    sys.path.insert(0, str(ROOT / "src"))


def _npz_bytes(arrays: dict) -> bytes:
    """``arrays`` as the bytes of an .npz file."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def machine() -> str:
    """CPU model from /proc/cpuinfo, else ``platform``."""
    from scunlearn.costs import cpu_model

    return cpu_model()


def load_config(configfile: Path) -> dict:
    """``configfile`` with the schema's defaults filled, as the workflow reads it: a config given on the command
    line replaces config/config.yaml (the Snakefile), it is not merged into it."""
    from scunlearn.configfile import check_config_files

    return check_config_files([str(configfile)], ROOT / "config/schema.yaml")


def startup_seconds(reps: int = 3, device: str = "cpu") -> tuple[float, float]:
    """Median (wall, CPU) seconds of a fresh interpreter importing what a training or audit job imports
    (and, on a GPU, creating its CUDA context, as a job on the GPU does)."""
    import resource

    # a job's own imports (no AnnData, scikit-learn or scipy.stats: jobs read h5ad with h5py and
    # take their folds, groups and regression from scunlearn), as in the stages' "ready" marks
    code = ("import torch, scunlearn.stages.audit, scunlearn.vae.train, scunlearn.membership.attackers, "
            "scunlearn.audit.attacks, "
            "scunlearn.audit.utility, scunlearn.audit.calibrated")
    if device != "cpu":
        code += f"; torch.zeros(1, device={device!r}).sum().item()"
    walls, cpus = [], []
    for _ in range(reps):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        walls.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def calibration(results_dir: str | None, variants: dict) -> dict[str, float]:
    """Median unlearn / retrain wall time per variant from a finished run's benchmarks (1.0 if absent); a
    retrained model's time is its job's over the seeds it trained (an ensemble job trains several)."""
    factors = {v: 1.0 for v in variants}
    if not results_dir:
        return factors
    from scunlearn.costs import job_costs

    jobs = job_costs(results_dir)
    rt = jobs[jobs["rule"] == "retrain"]
    # per retrained model: an ensemble retrain job trains `units` seeds at once
    retrain = (rt["wall_s"] / rt["units"].clip(lower=1)).median() if "units" in rt else rt["wall_s"].median()
    for v in variants:
        sel = jobs[(jobs["rule"] == "unlearn") & jobs["job"].str.startswith(f"{v}/")]
        # per unlearned model: a job unlearns its variant's K members (`units`)
        w = (sel["wall_s"] / sel["units"].clip(lower=1)).median() if "units" in sel else sel["wall_s"].median()
        if w == w and retrain == retrain and retrain > 0:
            factors[v] = float(w / retrain)
    return factors


def measure(cfg: dict, cells: int, genes: int, train_threads: int, device: str, workdir: Path) -> dict:
    """Seconds (wall and CPU) of one epoch, one audit and the small stages, run in-process at full size
    (the data it writes stay in ``workdir``, for :func:`measure_sharing`)."""
    import pandas as pd
    import torch

    from scunlearn.data.simulate import simulate_counts
    from scunlearn.io import write_h5ad
    from scunlearn.runtime import seed_everything
    from scunlearn.stages.audit import stage_audit
    from scunlearn.stages.common import job_device
    from scunlearn.stages.data import stage_forget, stage_split
    from scunlearn.stages.train import stage_matched
    from scunlearn.vae.checkpoints import save_checkpoint
    from scunlearn.vae.model import VAEConfig, build_vae
    from scunlearn.vae.train import fit, load_experiment

    markers_path = str(ROOT / cfg["preprocess"]["markers"])
    markers = pd.read_csv(markers_path, sep="\t")
    t0 = time.perf_counter()
    adata = simulate_counts(markers, n_cells=cells, n_genes=genes, seed=cfg["seed"])
    adata.obs["cell_type"] = adata.obs["true_type"].astype("category")
    adata.obs["leiden"] = adata.obs["cell_type"].cat.codes.astype(str).astype("category")
    adata.layers["counts"] = adata.X.copy()
    from sklearn.decomposition import TruncatedSVD  # the matched negatives are chosen in PCA

    adata.obsm["X_pca"] = TruncatedSVD(cfg["preprocess"].get("n_pcs", 50), random_state=0).fit_transform(
        adata.X.log1p())
    sim_s = time.perf_counter() - t0
    f = {k: str(workdir / k) for k in ("adata.h5ad", "split.json", "forget.json", "matched.json", "model.pt",
                                       "audit.json")}
    out: dict[str, float] = {"simulate_s": sim_s}

    def timed(name, fn):
        w, c = time.perf_counter(), time.process_time()
        fn()
        out[name + "_s"], out[name + "_cpu_s"] = time.perf_counter() - w, time.process_time() - c

    timed("write_h5ad", lambda: write_h5ad(adata, f["adata.h5ad"]))
    timed("split", lambda: stage_split({"adata": f["adata.h5ad"]}, {"split": f["split.json"]},
                                         {"splits": cfg["splits"], "seed": cfg["seed"]}, 1))
    name, spec = next(iter(cfg["forget_sets"].items()))
    timed("forget_set", lambda: stage_forget({"adata": f["adata.h5ad"], "split": f["split.json"]},
                                               {"forget": f["forget.json"]},
                                               {"spec": spec, "seed": cfg["seed"], "name": name}, 1))

    # one epoch of the real training recipe (fit), with the rule's threads
    seed_everything(cfg["seed"], train_threads)
    dev = job_device(device)
    adata_r, X, part = load_experiment({"adata": f["adata.h5ad"], "split": f["split.json"]}, dev)
    model = build_vae(VAEConfig(n_genes=adata_r.n_vars, **cfg["model"])).to(dev)
    tr = cfg["train"]
    w, c = time.perf_counter(), time.process_time()
    hist = fit(model, X, part.retain, part.validation, lr=tr["lr"], batch_size=tr["batch_size"], max_epochs=1,
               kl_warmup_epochs=tr["kl_warmup_epochs"], patience=tr["patience"], seed=cfg["seed"])
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out["epoch_s"], out["epoch_cpu_s"] = time.perf_counter() - w, time.process_time() - c
    out["epoch_fit_s"] = float(hist["seconds"].iloc[0])
    out["n_train"] = int(len(part.retain))
    if tr.get("ensemble", True):
        # what a baseline / retrain job runs with train.ensemble: every seed of the model (train.seeds
        # and audit.reference_seeds) as one batched model, one epoch
        from scunlearn.vae.batched import fit_ensemble

        k = len(tr["seeds"]) + len(cfg["audit"].get("reference_seeds") or [])
        vcfg = VAEConfig(n_genes=adata_r.n_vars, **cfg["model"])
        w, c = time.perf_counter(), time.process_time()
        fit_ensemble(vcfg, list(range(k)), X, part.retain, part.validation, lr=tr["lr"],
                     batch_size=tr["batch_size"], max_epochs=1, kl_warmup_epochs=tr["kl_warmup_epochs"],
                     patience=tr["patience"])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        out["ensemble_k"] = k
        out["ensemble_epoch_s"], out["ensemble_epoch_cpu_s"] = time.perf_counter() - w, time.process_time() - c
    save_checkpoint(model.cpu(), f["model.pt"], {"genes": list(map(str, adata_r.var_names)), "param_hash": "x"})

    torch.set_num_threads(1)  # matched and audit rules run with 1 thread
    timed("matched", lambda: stage_matched(
        {"adata": f["adata.h5ad"], "split": f["split.json"], "forget": f["forget.json"]},
        {"matched": f["matched.json"]},
        {"k": cfg["matched"]["k"], "min_matched": cfg["matched"]["min_matched"], "seed": cfg["seed"]}, 1))
    # per-cell statistics: the model's own, and perturbed copies standing in for the reference models
    import numpy as np

    from scunlearn.audit.attacks import resolve_attacks
    from scunlearn.io import write_with_digest
    from scunlearn.vae.cellstats import write_cell_stats

    write_cell_stats(model, X.cpu(), adata_r.obs_names, workdir / "target.cells.npz")
    refs = [str(workdir / f"ref{i}.cells.npz") for i in range(2 + len(cfg["audit"].get("reference_seeds", [])))]
    with np.load(workdir / "target.cells.npz") as z:
        base = dict(z)
    rng = np.random.default_rng(0)
    for r in refs:  # written with their digest records, as the audit verifies them
        noisy = {k: (v + rng.normal(0, 1, v.shape) if v.dtype.kind == "f" else v) for k, v in base.items()}
        write_with_digest(r, lambda p, noisy=noisy: p.write_bytes(_npz_bytes(noisy)))
    a = cfg["audit"]
    audit_device = a.get("device") or device  # audit.device, else the study's (as the workflow's audit rule)
    out["audit_device"] = str(job_device(audit_device))
    audit_params = {
        "run": cfg["run"], "dataset": cfg["dataset"]["source"], "forget": name, "variant": "baseline",
        "method": "baseline", "model_seeds": [0], "seed": cfg["seed"], "self_names": ["baseline/seed0"],
        "ref_retrain": [f"retrain/seed{i}" for i in range(len(refs))],
        "ref_baseline": [f"baseline/seed{i}" for i in range(len(refs))], "controls": [],
        "audit": {"alpha": a.get("alpha", 0.05), "equivalence_margin": a.get("equivalence_margin", 0.05),
                  "bootstrap": a.get("bootstrap", 1000), "attacks": resolve_attacks(a.get("attacks")),
                  "utility": a.get("utility", {"max_cells": 5000, "folds": 5})},
        "target_sum": cfg["preprocess"]["target_sum"], "device": audit_device,
    }
    timed("audit", lambda: stage_audit(
        {"adata": f["adata.h5ad"], "split": f["split.json"], "forget": f["forget.json"],
         "matched": f["matched.json"], "models": [f["model.pt"]], "markers": markers_path, "benchmarks": [""],
         "cells": [str(workdir / "target.cells.npz")], "ref_retrain": refs, "ref_baseline": refs, "controls": []},
        {"audits": [f["audit.json"]]}, audit_params, 1))
    return out


def measure_sharing(cfg: dict, device: str, workdir: Path, share: list[int], timeout: float) -> dict[int, float]:
    """A lone model's epoch seconds (median over the jobs) with 1 and each n in ``share`` jobs training at
    once on the device (snakemake --resources gpu=n on one GPU), on the data :func:`measure` wrote; all
    within ``timeout`` seconds."""
    from scunlearn.stages.sharing import shared_device_epochs

    inp = {"adata": str(workdir / "adata.h5ad"), "split": str(workdir / "split.json")}
    end = time.monotonic() + timeout
    out = {}
    for n in sorted({1, *share}):
        left = end - time.monotonic()
        if left <= 1:
            raise TimeoutError(f"--share: no time left for {n} jobs (--share-timeout {timeout:.0f} s)")
        out[n] = statistics.median(shared_device_epochs(n, inp, cfg["model"], cfg["train"], device,
                                                        workdir / "shared", threads=1, seed=cfg["seed"],
                                                        timeout=left))
    return out


LONE_RULES = ("unlearn", "sisa_shards")  # jobs that train one model alone: launch-bound on a GPU


def shared_rows(shared: dict[int, float], jobs_hi: list[dict], jobs_lo: list[dict],
                lone: tuple[str, ...] = LONE_RULES) -> list[str]:
    """The table's rows for n jobs sharing the GPU, from ``shared`` = {n: a lone model's epoch seconds with
    n jobs training at once} (n = 1 included); none if only n = 1 was measured. ``lone``: the rules whose
    jobs train one model alone (with ``train.ensemble: false`` also baseline and retrain). Their whole
    job time, start-up included, is scaled by the epochs' slowdown: start-up is CPU work, which
    overlaps across jobs at least as well."""
    from scunlearn.costs import shared_gpu_hours

    if 1 not in shared or len(shared) < 2:
        return []
    alone = shared[1]
    rows = [f"# n jobs sharing the GPU (--resources gpu=n): a lone model's epoch {alone:.2f}s with one job; "
            "the unlearning and shard jobs",
            "# overlap, each slowed as measured; the ensembles and audits are counted whole (upper bound):"]
    for n in sorted(k for k in shared if k != 1):
        slow = shared[n] / alone
        for label, jobs in (("upper", jobs_hi), ("lower", jobs_lo)):
            h = shared_gpu_hours(jobs, n, slow, lone)
            rows.append(f"{f'GPU, {label}, {n} sharing':28}{'':>14}{h:>10.2f}h GPU  "
                        f"(epoch {shared[n]:.2f}s each, {slow:.2f}x alone)")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configfile", default=str(ROOT / "config/config.yaml"))
    p.add_argument("--cells", type=int, default=None,
                   help="cells after QC (default: the simulated size, or 33000 for PBMC 33k)")
    p.add_argument("--cores", default="2,8,32,128", help="core counts to print the wall time for")
    p.add_argument("--calibrate", default=None, help="a finished run's results folder for unlearn/retrain factors")
    p.add_argument("--device", default="cpu", help="cpu, or auto / cuda where a GPU is present")
    p.add_argument("--share", default="8",
                   help="on a GPU: also measure N jobs sharing it (comma-separated N; 1 is always measured; "
                        "'' to skip)")
    p.add_argument("--share-timeout", type=float, default=180.0,
                   help="seconds for the --share measurement, after the main table is printed")
    p.add_argument("--jobs-from-config", action="store_true",
                   help="skip 'snakemake -n' (counts derived from the config instead)")
    a = p.parse_args(argv)

    from scunlearn.costs import dag_job_counts, study_estimate
    from scunlearn.io import setup_logging

    setup_logging(None, level=30)  # warnings only: the stages' info lines would drown the table
    cfg = load_config(Path(a.configfile))
    from scunlearn.methods import expand_variants

    seeds, forget = len(cfg["train"]["seeds"]), list(cfg["forget_sets"])
    variants = expand_variants(cfg["methods"], forget, int(cfg["train"]["max_epochs"]))  # ladders: one per rung
    refs = len(cfg.get("audit", {}).get("reference_seeds") or [])
    ms = cfg.get("audit", {}).get("method_seeds", "train")
    method_seeds = seeds if ms == "train" else (seeds + refs if ms == "all" else len(ms))
    # one unlearning job per (variant, forget set), unlearning its method_seeds members
    n_var_jobs = {v: len(d.get("forget_sets", forget)) for v, d in variants.items()}
    if a.jobs_from_config:
        n_models = 1 if cfg["train"].get("ensemble", True) else seeds + len(cfg["audit"].get("reference_seeds") or [])
        counts = {"acquire": 1, "preprocess": 1, "split": 1, "forget_set": len(forget), "baseline": n_models,
                  "matched_negatives": len(forget), "retrain": len(forget) * n_models,
                  "unlearn": sum(n_var_jobs.values()),
                  # one audit job per (forget set, model), auditing the model's seeds
                  "audit": 2 * len(forget) + sum(n_var_jobs.values()), "aggregate": 1,
                  "report": 1}
        source = "from the config"
    else:
        counts = dag_job_counts(a.configfile, ROOT)
        counts["audit"] = counts.get("audit", 0) + counts.pop("audit_method", 0)  # methods' audits: their own rule
        source = "snakemake -n --forceall"
    sim = cfg["dataset"].get("simulate") or {}
    cells = a.cells or (sim.get("n_cells") if cfg["dataset"]["source"] == "simulate" else 33000)
    genes = int(cfg["preprocess"]["n_hvg"])
    threads = {"train": 2, "unlearn": 2, **{k: v.get("threads", 2) for k, v in (cfg.get("resources") or {}).items()}}

    import torch

    from scunlearn.runtime import resolve_device

    # a device this machine lacks stops here, naming it, before minutes of simulation; `auto` without a GPU is the CPU
    dev = resolve_device(a.device)
    on_gpu = dev.type != "cpu"
    n_threads = torch.get_num_threads()
    startup_wall, startup = startup_seconds()
    # a job on the GPU: its imports and CUDA context, wall seconds (its CPU time is not what it costs)
    gpu_startup = startup_seconds(device=str(dev))[0] if on_gpu else startup
    share = [int(n) for n in a.share.split(",") if n.strip()] if on_gpu else []
    if any(n < 1 for n in share):
        p.error(f"--share: job counts must be >= 1, got {a.share!r}")
    tmp = tempfile.TemporaryDirectory()
    m = measure(cfg, cells, genes, threads["train"], a.device, Path(tmp.name))
    factors = calibration(a.calibrate, variants)

    tr = cfg["train"]
    # per-epoch job seconds: CPU seconds over the job's threads, or the wall time on a GPU
    audit_on_gpu = not m["audit_device"].startswith("cpu")
    model_startup = gpu_startup if on_gpu else startup
    audit_startup = gpu_startup if audit_on_gpu else startup
    epoch_job_s = m["epoch_cpu_s"] / threads["train"] if not on_gpu else m["epoch_s"]
    # a baseline / retrain job: one model per seed, or (train.ensemble) all its seeds batched in one job
    ens = "ensemble_k" in m
    train_epoch_s = ((m["ensemble_epoch_cpu_s"] / threads["train"] if not on_gpu else m["ensemble_epoch_s"])
                     if ens else epoch_job_s)
    # the unit of the unlearn / retrain factors: one model trained alone, on the device. An unlearning job
    # trains one model (never batched); the factors come from a CPU run, where a retrained model's share of
    # its ensemble job is what it costs alone (bench/README), so they are unlearning over lone training.
    # On a GPU a lone model is launch-bound and several times an ensemble member's share.
    model_epoch_s = epoch_job_s
    hi_epochs, lo_epochs = tr["max_epochs"], min(tr["max_epochs"], tr["kl_warmup_epochs"] + tr["patience"] + 1)

    def jobs_for(epochs: int) -> list[dict]:
        # CPU seconds per job, spread over the job's threads: a quiet machine's wall time per job
        train_s = model_startup + epochs * train_epoch_s
        small = startup + 5.0
        js = [
            {"rule": "acquire", "count": counts.get("acquire", 1), "seconds": small, "threads": 1, "stage": 0},
            {"rule": "preprocess", "count": counts.get("preprocess", 1), "seconds": small, "threads": 2, "stage": 1},
            {"rule": "split", "count": counts.get("split", 1), "seconds": startup + m["split_cpu_s"], "threads": 1,
             "stage": 2},
            {"rule": "forget_set", "count": counts.get("forget_set", 0), "seconds": startup + m["forget_set_cpu_s"],
             "threads": 1, "stage": 3},
            {"rule": "baseline", "count": counts.get("baseline", 0), "seconds": train_s, "threads": threads["train"],
             "stage": 4, "gpu": on_gpu},
            {"rule": "retrain", "count": counts.get("retrain", 0), "seconds": train_s, "threads": threads["train"],
             "stage": 4, "gpu": on_gpu},
            # sisa's shards: together one model's cells, each shard trained to its own early stop
            {"rule": "sisa_shards", "count": counts.get("sisa_shards", 0),
             "seconds": model_startup + epochs * epoch_job_s, "threads": threads["train"], "stage": 4,
             "gpu": on_gpu},
            {"rule": "matched_negatives", "count": counts.get("matched_negatives", 0),
             "seconds": startup + m["matched_cpu_s"], "threads": 1, "stage": 5},
        ]
        n_unlearn = counts.get("unlearn", 0)
        total_var = sum(n_var_jobs.values()) or 1
        for v, n in n_var_jobs.items():  # the DAG's unlearn jobs, split over variants as the config does
            js.append({"rule": f"unlearn:{v}", "count": round(n_unlearn * n / total_var),
                       "seconds": model_startup + method_seeds * epochs * model_epoch_s * factors[v],
                       "threads": threads["unlearn"],
                       "stage": 6, "gpu": on_gpu})
        js += [
            # one audit job audits every seed of a model: one start-up, `seeds` audits (each
            # measured with its data loading, so an upper figure); on the GPU (audit.device) wall seconds
            {"rule": "audit", "count": counts.get("audit", 0),
             "seconds": audit_startup + seeds * (m["audit_s"] if audit_on_gpu else m["audit_cpu_s"]),
             "threads": 1, "stage": 7, "gpu": audit_on_gpu},
            {"rule": "aggregate", "count": counts.get("aggregate", 1), "seconds": small, "threads": 1, "stage": 8},
            {"rule": "report", "count": counts.get("report", 1), "seconds": small, "threads": 1, "stage": 9},
        ]
        return js

    cores = [int(c) for c in a.cores.split(",") if c.strip()]
    hi, lo = study_estimate(jobs_for(hi_epochs), cores), study_estimate(jobs_for(lo_epochs), cores)

    print(f"# study_cost: {a.configfile} (run '{cfg['run']}')")
    print(f"# machine  {machine()}, {n_threads} torch threads "
          f"available; torch {torch.__version__}; python {platform.python_version()}")
    print(f"# data     {cells} cells x {genes} genes (simulated at the study's size)")
    print(f"# jobs     {sum(counts.values())} ({source}): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"# measured start-up {startup:.1f}s CPU ({startup_wall:.1f}s wall) per job (fresh interpreter, imports)")
    print(f"# measured one epoch {m['epoch_s']:.1f}s wall / {m['epoch_cpu_s']:.1f}s CPU on {threads['train']} "
          f"threads ({m['n_train']} training cells, batch {tr['batch_size']}, incl. validation ELBO)")
    if ens:
        print(f"# measured one epoch of the batched ensemble (train.ensemble, {m['ensemble_k']} seeds, one "
              f"baseline / retrain job): {m['ensemble_epoch_s']:.1f}s wall / {m['ensemble_epoch_cpu_s']:.1f}s CPU "
              f"({m['ensemble_epoch_s'] / m['ensemble_k']:.2f}s wall per seed against {m['epoch_s']:.2f}s alone)")
    print(f"# measured one audit {m['audit_s']:.1f}s wall / {m['audit_cpu_s']:.1f}s CPU on 1 thread "
          f"(attackers on {m['audit_device']}); "
          f"matched negatives {m['matched_s']:.1f}s")
    print("# unlearn / retrain factors: " + ", ".join(f"{v} {f:.2f}" for v, f in factors.items())
          + ("" if a.calibrate else " (assumed: no --calibrate run given)"))
    print("# unlearning job = start-up + epochs x one lone model's epoch on the device x its factor (calibrate "
          "from a CPU run: there a retrained model's share of its ensemble job is what it costs alone; on a GPU "
          "it is several times less)")
    print("# acquire, preprocess, aggregate, report: start-up + 5 s each (not measured at full size)")
    print("# model: job time = its CPU seconds / its threads (CPU time, not wall: on a shared machine the wall")
    print("# clock counts other users' work); wall on N cores = max(critical path, core-seconds / N)")
    print()
    head = f"{'':28}{'epochs/model':>14}{'CPU-hours':>11}{'critical path':>15}  "
    print(head + "  ".join(f"wall@{n}c" for n in cores))
    for label, e, est in (("CPU, upper (max_epochs)", hi_epochs, hi), ("CPU, lower (early stop)", lo_epochs, lo)):
        walls = "  ".join(f"{est['wall_h'][n]:>6.1f}h".rjust(len(f"wall@{n}c")) for n in cores)
        print(f"{label:28}{e:>14}{est['cpu_hours']:>11.3g}{est['critical_path_h']:>14.2f}h  {walls}")
    if on_gpu:
        rules = sorted({j["rule"].split(":")[0] for j in jobs_for(hi_epochs) if j.get("gpu") and j["count"]})
        print(f"# on the GPU ({', '.join(rules)}): job-seconds summed, i.e. one GPU running its jobs one after")
        print("# another (an upper bound on its wall time: jobs that share it overlap):")
        for label, est in (("GPU, upper (max_epochs)", hi), ("GPU, lower (early stop)", lo)):
            print(f"{label:28}{'':>14}{est['gpu_hours']:>10.2f}h GPU")
    else:
        print(f"{'GPU':28}{'':>14}{'':>11}{'':>15}  not measured (run with --device cuda where a GPU is present)")
    if share:
        # after the table: a failure or a time-out here loses none of it
        print(f"# measuring a lone model's epoch with {', '.join(map(str, sorted({1, *share})))} jobs at once on "
              f"{a.device} (--share) ...", flush=True)
        lone = LONE_RULES if ens else (*LONE_RULES, "baseline", "retrain")
        try:
            shared = measure_sharing(cfg, a.device, Path(tmp.name), share, a.share_timeout)
        except (RuntimeError, TimeoutError) as e:
            print(f"# --share not measured: {e}")
        else:
            for line in shared_rows(shared, jobs_for(hi_epochs), jobs_for(lo_epochs), lone):
                print(line)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
