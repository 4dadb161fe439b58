"""n jobs training at once on one device: what sharing a GPU costs each (``bench/study_cost.py --share``).

A lone model's training step is bound by kernel launches on a GPU (a few percent of its compute), so
several workflow jobs can share one GPU (``snakemake --resources gpu=n``). :func:`shared_device_epochs`
measures what that costs each of them with real processes, as the workflow runs its jobs. Not a rule's
input (no stage imports it): the benchmarks use it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def shared_device_epochs(n: int, inp: dict, model: dict, train: dict, device: str, workdir: str | os.PathLike, *,
                         epochs: int = 3, threads: int = 1, seed: int = 0, timeout: float = 600.0) -> list[float]:
    """Seconds of one lone model's training epoch while ``n`` jobs train at once on ``device``: one per job.

    Starts ``n`` fresh interpreters (as ``n`` workflow jobs are); each loads the data (``inp``:
    ``adata`` and ``split`` paths), builds the config's model (seed ``seed + i``) and, once all have
    loaded, trains it with the training recipe for ``epochs`` epochs; it reports the median of its
    epochs after the first (the first pays kernel selection and the allocator's growth). On a GPU,
    where a lone model's step is bound by kernel launches, n jobs overlap: the ratio to ``n = 1`` is
    what sharing the GPU costs each of them.
    """
    import json
    import subprocess
    import sys

    if n < 1 or epochs < 1:
        raise ValueError(f"shared_device_epochs: n and epochs must be >= 1 (got {n}, {epochs})")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    go = work / f"go{n}"
    go.unlink(missing_ok=True)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])  # the source tree this module came from, first on the path
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    procs, files = [], []

    def start(i: int) -> None:
        f = {k: str(work / f"{k}{n}_{i}") for k in ("ready", "out", "err")}
        for k in ("ready", "out"):
            Path(f[k]).unlink(missing_ok=True)
        spec = {"adata": inp["adata"], "split": inp["split"], "model": model, "train": train, "device": device,
                "epochs": epochs, "threads": threads, "seed": seed + i, "ready": f["ready"], "go": str(go),
                "out": f["out"], "timeout": timeout}
        with open(f["err"], "w") as err:
            worker = "import json, sys; from scunlearn.stages.sharing import epoch_worker; " \
                     "epoch_worker(json.loads(sys.argv[1]))"
            procs.append(subprocess.Popen([sys.executable, "-c", worker, json.dumps(spec)],
                                          stdout=subprocess.DEVNULL, stderr=err, env=env))
        files.append(f)

    def failed() -> str | None:
        for p, f in zip(procs, files):
            if p.poll() not in (None, 0):
                tail = Path(f["err"]).read_text()[-3000:]
                return f"shared_device_epochs: a worker exited with {p.returncode}:\n{tail}"
        return None

    try:
        for i in range(n):
            start(i)
        deadline = time.monotonic() + timeout
        while not all(Path(f["ready"]).exists() for f in files):
            msg = failed()
            if msg:
                raise RuntimeError(msg)
            if time.monotonic() > deadline:
                raise TimeoutError(f"shared_device_epochs: {n} workers not ready after {timeout:.0f} s")
            time.sleep(0.05)
        go.touch()  # all loaded: they train at the same time
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"shared_device_epochs: {n} workers not done after {timeout:.0f} s") from None
        msg = failed()
        if msg:
            raise RuntimeError(msg)
        return [float(json.loads(Path(f["out"]).read_text())) for f in files]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def epoch_worker(spec: dict) -> None:
    """One worker of :func:`shared_device_epochs` (run in its own interpreter)."""
    import json
    import statistics

    from scunlearn.runtime import resolve_device, seed_everything
    from scunlearn.vae.model import VAEConfig, build_vae
    from scunlearn.vae.train import fit, load_experiment

    seed_everything(int(spec["seed"]), int(spec["threads"]))
    adata, X, part = load_experiment({"adata": spec["adata"], "split": spec["split"]},
                                      resolve_device(spec["device"]))
    vae = build_vae(VAEConfig(n_genes=adata.n_vars, **spec["model"])).to(X.device)
    parent = os.getppid()
    Path(spec["ready"]).touch()
    deadline = time.monotonic() + float(spec["timeout"])
    while not Path(spec["go"]).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("epoch_worker: no go signal")
        if os.getppid() != parent:  # the measuring process is gone: free the device
            raise SystemExit("epoch_worker: the parent process ended")
        time.sleep(0.01)
    tr, e = spec["train"], int(spec["epochs"])
    hist = fit(vae, X, part.retain, part.validation, lr=tr["lr"], batch_size=tr["batch_size"], max_epochs=e,
               kl_warmup_epochs=tr["kl_warmup_epochs"], patience=e + 1, seed=int(spec["seed"]))
    secs = hist["seconds"].tolist()
    tmp = Path(spec["out"] + ".tmp")
    tmp.write_text(json.dumps(statistics.median(secs[1:] or secs)))
    tmp.replace(spec["out"])
