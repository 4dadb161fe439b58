#!/usr/bin/env python
"""Training throughput of the paper VAE, and how it compares with the machine's matmul speed.

What it does, in one run, on one device with one thread count:

1. simulates a raw UMI count matrix (``simulate_counts``; default 28,000 cells x 2,000
   genes) and holds it as one dense float32 tensor on the device, as the workflow does
   (``scunlearn.vae.train.counts_tensor``);
2. for each batch size, builds a fresh paper-architecture VAE (hidden 1024-512-128,
   latent 32, dropout 0.1) with Adam, runs a short warm-up of a few batches, then times
   ``--epochs`` full epochs of the real training loop (``scunlearn.vae.train.run_epoch``)
   and reports cells/s;
3. measures the dense float32 matmul throughput (``torch.matmul`` of two N x N matrices,
   best of several repetitions) on the same device and threads;
4. converts cells/s to achieved training GFLOP/s with an analytic FLOP count per cell
   (see :func:`flops_per_cell`) and prints its ratio to the matmul GFLOP/s;
5. with ``--ensemble K[,K2...]``: for each batch size also K seeds trained at once as one
   batched model (``scunlearn.vae.batched.Ensemble``, the workflow's ``train.ensemble``), its
   cells/s summed over the K members, printed beside the single model's. K = 1 is one model
   through the ensemble trainer: on CUDA its step is a captured CUDA graph (``--step``,
   default ``auto``: a graph on CUDA, eager on CPU; the workflow's ``train.cuda_graphs``).

Usage (from the repository root)::

    python bench/train_throughput.py                       # 28k x 2000, batches 128 and 512
    python bench/train_throughput.py --cells 2000 --genes 500 --out bench.tsv   # quick
    python bench/train_throughput.py --ensemble 8          # and 8 seeds as one batched model
    python bench/train_throughput.py --device cuda --batch-sizes 128 --ensemble 1,8   # CUDA graphs
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import scunlearn  # noqa: F401
except ImportError:  # not pip-installed: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from scunlearn.data.simulate import simulate_counts  # noqa: E402
from scunlearn.runtime import resolve_device, seed_everything  # noqa: E402
from scunlearn.vae.model import VAEConfig, build_vae  # noqa: E402
from scunlearn.vae.train import counts_tensor, run_epoch  # noqa: E402

try:
    from scunlearn.vae.train import adam  # the optimizer training uses (fused Adam)
except ImportError:  # an older checkout, to compare before / after with this script
    def adam(params, lr):
        return torch.optim.Adam(params, lr=lr)

CLOCK = time.perf_counter  # --clock cpu: time.process_time (this process's CPU seconds)


def clock() -> float:
    return CLOCK()

PAPER = {"hidden": [1024, 512, 128], "latent": 32, "dropout": 0.1}


def machine_name(device: torch.device) -> str:
    """GPU name for CUDA, else the CPU model from /proc/cpuinfo (or ``platform``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from scunlearn.costs import cpu_model

    return cpu_model()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_cell(model: nn.Module) -> tuple[int, int]:
    """(forward, training) FLOPs per cell, counting the Linear layers only.

    Forward = 2 x sum(in x out) over every nn.Linear (encoder, the μ and log σ² heads,
    decoder and the output layer): one multiply and one add per weight. Training is
    taken as 3 x forward (forward + backward, the backward costing two matmuls per
    layer: grad w.r.t. the input and w.r.t. the weight) - the usual convention. It
    slightly overstates the work: the first encoder layer needs no input gradient (the
    counts do not require grad), i.e. 2 x n_genes x 1024 FLOPs fewer per cell (~13% at
    2,000 genes). LayerNorm, activations, softmax, the NB log-likelihood (lgamma) and the
    Adam update are not counted: they are the part that does not run at matmul speed.
    """
    fwd = 2 * sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return fwd, 3 * fwd


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 10) -> tuple[float, float]:
    """(best, median) GFLOP/s of an n x n float32 matmul on ``device``; 2 n^3 FLOPs each."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    for _ in range(2):  # warm-up (thread pool, allocator, cuBLAS handles)
        torch.matmul(a, b)
    sync(device)
    rates = []
    for _ in range(reps):
        t0 = clock()
        torch.matmul(a, b)
        sync(device)
        rates.append(2 * n**3 / (clock() - t0) / 1e9)
    return max(rates), statistics.median(rates)


def time_training(X: torch.Tensor, batch_size: int, epochs: int, warmup_batches: int,
                  lr: float, seed: int) -> float:
    """Seconds for ``epochs`` timed epochs of ``run_epoch`` over all rows of X."""
    device = X.device
    torch.manual_seed(seed)
    model = build_vae(VAEConfig(n_genes=X.shape[1], **PAPER)).to(device)
    opt = adam(model.parameters(), lr)
    idx = torch.arange(X.shape[0], device=device)
    gen = torch.Generator().manual_seed(seed)
    # warm-up: a few batches through the same loop (allocations, Adam state, kernel choice)
    run_epoch(model, opt, X, idx[: warmup_batches * batch_size], batch_size, 1.0, gen)
    sync(device)
    t0 = clock()
    for _ in range(epochs):
        loss = run_epoch(model, opt, X, idx, batch_size, 1.0, gen)
    sync(device)
    secs = clock() - t0
    if not torch.isfinite(torch.tensor(loss)):
        raise RuntimeError(f"batch {batch_size}: training diverged (loss {loss})")
    return secs


def time_ensemble(X: torch.Tensor, k: int, batch_size: int, epochs: int, warmup_batches: int,
                  lr: float, seed: int, step: str = "auto") -> float:
    """Seconds for ``epochs`` timed epochs of K seeds (seed .. seed+K-1) trained as one batched model
    (``step``: :class:`scunlearn.vae.batched.Ensemble`'s; a CUDA graph is captured in the warm-up)."""
    from scunlearn.vae.batched import GRAPH_WARMUP_STEPS, Ensemble

    device = X.device
    ens = Ensemble(VAEConfig(n_genes=X.shape[1], **PAPER), range(seed, seed + k), device, lr, step=step)
    idx = torch.arange(X.shape[0], device=device)
    # enough warm-up batches for the capture to happen before the clock starts
    warm = max(warmup_batches, GRAPH_WARMUP_STEPS + 2 if ens.step_mode == "graph" else 0)
    ens.run_epoch(X, idx[: warm * batch_size], batch_size, 1.0)
    sync(device)
    t0 = clock()
    for _ in range(epochs):
        loss = ens.run_epoch(X, idx, batch_size, 1.0)
    sync(device)
    secs = clock() - t0
    if not all(torch.isfinite(torch.tensor(loss))):
        raise RuntimeError(f"ensemble, batch {batch_size}: training diverged (losses {loss})")
    return secs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cells", type=int, default=28000, help="simulated cells")
    p.add_argument("--genes", type=int, default=2000, help="simulated genes")
    p.add_argument("--batch-sizes", default="128,512", help="comma-separated batch sizes")
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per batch size")
    p.add_argument("--warmup-batches", type=int, default=5, help="untimed batches before timing")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--matmul-n", type=int, default=2048, help="size of the square matmul")
    p.add_argument("--matmul-reps", type=int, default=10, help="timed matmul repetitions")
    p.add_argument("--ensemble", default="", metavar="K[,K2...]",
                   help="also time K seeds trained at once as one batched model (cells/s summed over members); "
                        "1 = one model through the ensemble trainer")
    p.add_argument("--step", default="auto", choices=["auto", "eager", "static", "graph"],
                   help="the ensemble's training step: auto = a CUDA graph on CUDA, eager on CPU")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: time matmul and training by this process's CPU seconds - steadier than the "
                        "wall clock on a shared machine, and meaningful with --threads 1 only")
    p.add_argument("--markers", default=str(ROOT / "resources/markers/pbmc.tsv"))
    p.add_argument("--out", default=None, help="also write the table as TSV here")
    a = p.parse_args(argv)
    try:
        ensembles = [int(k) for k in str(a.ensemble).split(",") if k.strip()]
    except ValueError:
        p.error(f"--ensemble: comma-separated member counts, not {a.ensemble!r}")
    if a.epochs < 1 or a.warmup_batches < 0 or a.cells < 2 or any(k < 1 for k in ensembles):
        p.error("need --epochs >= 1, --warmup-batches >= 0, --cells >= 2 and --ensemble counts >= 1")
    # run_epoch's float(loss) on a grad-requiring tensor warns on every call in torch >= 2.x;
    # harmless here (the loss is only logged), so keep the table readable
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")

    global CLOCK
    if a.clock == "cpu":
        if a.threads != 1:
            p.error("--clock cpu needs --threads 1 (idle threads spin and count as CPU time)")
        CLOCK = time.process_time
    batch_sizes = [int(b) for b in a.batch_sizes.split(",") if b.strip()]
    device = resolve_device(a.device)
    # as the workflow does: seed, deterministic kernels, thread count, allocator kept warm
    seed_everything(a.seed, a.threads)
    try:
        from scunlearn.runtime import tune_allocator
    except ImportError:  # an older checkout
        def tune_allocator():
            return False
    allocator = "glibc, tuned (scunlearn.costs.tune_allocator)" if tune_allocator() else "default"
    threads = torch.get_num_threads()

    t0 = time.perf_counter()
    markers = pd.read_csv(a.markers, sep="\t")
    X = counts_tensor(simulate_counts(markers, n_cells=a.cells, n_genes=a.genes, seed=a.seed), device)
    sim_secs = time.perf_counter() - t0

    fwd, train = flops_per_cell(build_vae(VAEConfig(n_genes=a.genes, **PAPER)))
    mm_best, mm_median = matmul_gflops(device, a.matmul_n, a.matmul_reps)

    machine = {
        "machine": machine_name(device),
        "device": str(device),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "malloc": allocator,
    }
    print("# train_throughput: paper VAE (hidden 1024-512-128, latent 32, dropout 0.1), Adam, run_epoch")
    for k, v in machine.items():
        print(f"# {k:<8} {v}")
    print(f"# data     {X.shape[0]} cells x {X.shape[1]} genes, dense float32 "
          f"({X.numel() * 4 / 2**20:.0f} MiB, mean {float(X.sum(1).mean()):.0f} UMI/cell), "
          f"simulated in {sim_secs:.1f}s")
    print(f"# flops    forward {fwd / 1e6:.2f} MFLOP/cell, training ~3x forward = {train / 1e6:.2f} MFLOP/cell")
    print(f"# matmul   {a.matmul_n}x{a.matmul_n} float32: best {mm_best:.1f} GFLOP/s, "
          f"median {mm_median:.1f} GFLOP/s (best of {a.matmul_reps} used below)")
    print(f"# timing   {a.epochs} epoch(s) per batch size after {a.warmup_batches} warm-up batches; "
          f"{a.clock} clock")

    rows = []
    from scunlearn.vae.batched import Ensemble

    step = Ensemble(VAEConfig(n_genes=8, hidden=[4], latent=2), [0], device, a.lr, step=a.step).step_mode
    runs = [("solo", 1)] + [("ensemble", k) for k in ensembles]
    for bs in batch_sizes:
        for trainer, k in runs:
            if trainer == "solo":
                secs = time_training(X, bs, a.epochs, a.warmup_batches, a.lr, a.seed)
            else:
                secs = time_ensemble(X, k, bs, a.epochs, a.warmup_batches, a.lr, a.seed, a.step)
            cps = k * a.epochs * X.shape[0] / secs  # summed over the ensemble's members
            gflops = cps * train / 1e9
            rows.append({"batch_size": bs, "models": k, "trainer": trainer,
                         "step": "eager" if trainer == "solo" else step, "cells": X.shape[0], "genes": X.shape[1],
                         "epochs": a.epochs, "seconds": round(secs, 3), "cells_per_s": round(cps, 1),
                         "train_gflops": round(gflops, 2), "matmul_gflops": round(mm_best, 2),
                         "ratio": round(gflops / mm_best, 3), **machine})

    head = ["batch", "models", "trainer", "step", "seconds", "cells/s", "train GFLOP/s", "matmul GFLOP/s", "ratio"]
    widths = [max(len(h), 8) for h in head]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for r in rows:
        vals = [f"{r['batch_size']}", f"{r['models']}", r["trainer"], r["step"], f"{r['seconds']:.2f}",
                f"{r['cells_per_s']:.0f}",
                f"{r['train_gflops']:.1f}", f"{r['matmul_gflops']:.1f}", f"{r['ratio']:.2f}"]
        print("  ".join(v.rjust(w) for v, w in zip(vals, widths)))

    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
            w.writeheader()
            w.writerows(rows)
        print(f"# wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
