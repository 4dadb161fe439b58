"""Stages of the unlearning rules: one method variant on one forget set (its K members), and SISA's shards."""

from __future__ import annotations

import json
import logging
import time

import pandas as pd

from scunlearn import ScunlearnError
from scunlearn.io import write_json, write_tsv
from scunlearn.stages import param_hash

log = logging.getLogger(__name__)


def stage_unlearn(inp, out, params, threads):
    """One method variant on one forget set, from each of its K baseline seeds: one job, K unlearned models.

    The data are read once. Members whose method has a batched form (``MethodSpec.batched``, e.g. the
    fine-tuning control) are unlearned together as one stacked model (each as its solo run up to float
    rounding); the others run in turn, each from a freshly seeded RNG, so a member's model is bit for bit
    the one a job of that seed alone would give. Each member's checkpoint, trajectory and per-cell
    statistics are written (atomically) as soon as it is done.
    """
    from scunlearn.costs import log_units
    from scunlearn.methods import get_method, resolve_params
    from scunlearn.methods.compute import CellMeter
    from scunlearn.runtime import seed_everything
    from scunlearn.stages.common import job_device
    from scunlearn.vae.train import load_experiment

    seeds = [int(s) for s in (params["seeds"] if "seeds" in params else [params["seed"]])]  # "seed": one member
    baselines = _as_list(inp["baseline"])
    outs = [{k: _as_list(out[k])[i] for k in ("model", "trajectory", "cells")} for i in range(len(seeds))]
    if not len({len(seeds), len(baselines), *(len(_as_list(out[k])) for k in ("model", "trajectory", "cells"))}) == 1:
        raise ScunlearnError(
            f"unlearn {params['variant']}: {len(seeds)} seeds, {len(baselines)} baselines and "
            f"{len(_as_list(out['model']))} checkpoints to write: one of each per member")
    method = get_method(params["method"])
    p = resolve_params(params["method"], params["params"], params["variant"])
    seed_everything(seeds[0], threads)
    device = job_device(params["device"])
    adata, X, part = load_experiment(inp, device)
    log_units(log, len(seeds), "models unlearned")
    log.info("unlearning with %s (%s): %d members (baseline seeds %s); forget %d, retain %d, validation %d; "
             "params %s", params["variant"], method.name, len(seeds), seeds, len(part.forget), len(part.retain),
             len(part.validation), json.dumps(p))
    members = [{"k": k, "seed": s, "baseline": str(baselines[k]), "out": outs[k], "inputs": _member_inputs(inp, k)}
               for k, s in enumerate(seeds)]
    job = {"method": method, "params": p, "variant": params["variant"], "X": X, "adata": adata, "part": part,
           "device": device, "threads": threads, "n": len(members)}
    if method.batched and len(members) > 1:
        log.info("the %d members unlearn together as one stacked model (%s)", len(members), method.batched)
        ctxs = [_member_context(m, job) for m in members]
        t0 = time.perf_counter()
        models = method.batch_fn(ctxs)  # it counts each member's cell passes itself (ctx.report)
        secs = (time.perf_counter() - t0) / len(members)
        for m, ctx, model in zip(members, ctxs, models):
            _write_member(m, job, ctx, model, secs)
        return
    for m in members:
        ctx = _member_context(m, job)
        t0 = time.perf_counter()
        with CellMeter() as meter:
            model = method.fn(ctx)
        ctx.report.setdefault("cell_passes", meter.cells)
        _write_member(m, job, ctx, model, time.perf_counter() - t0)


def _as_list(x) -> list:
    return [x] if isinstance(x, (str, bytes)) or not hasattr(x, "__iter__") else list(x)


def _member_inputs(inp, k: int) -> dict:
    """Member k's share of the job's inputs: per-member lists (a method's declared inputs) give their k-th file."""
    return {n: (_as_list(v)[k] if n not in ("adata", "split", "forget", "baseline", "code") else v)
            for n, v in dict(inp).items()}


def _member_context(m: dict, job: dict):
    """Seed the RNG as a job of member ``m``'s seed alone would, load its baseline and build its context."""
    from scunlearn.methods.context import Trajectory, UnlearnContext
    from scunlearn.runtime import seed_everything
    from scunlearn.vae.checkpoints import check_genes, load_checkpoint

    seed_everything(m["seed"], job["threads"])
    model, m["base_meta"] = load_checkpoint(m["baseline"], job["device"])
    check_genes(model, job["adata"], m["baseline"], m["base_meta"])
    log.info("member %d/%d: seed %d, from %s", m["k"] + 1, job["n"], m["seed"], m["baseline"])
    traj = Trajectory(f"{job['variant']}/seed{m['seed']}" if job["n"] > 1 else job["variant"])
    return UnlearnContext.build(model, job["X"], job["part"], m["seed"], job["params"], traj,
                                inputs=_method_inputs(job["method"], m["inputs"], job["adata"], job["part"]))


def _write_member(m: dict, job: dict, ctx, model, seconds: float) -> None:
    """Member ``m``'s trajectory, per-cell statistics and checkpoint (each written atomically)."""
    from scunlearn.stages.common import write_cells
    from scunlearn.vae.checkpoints import save_checkpoint

    p = job["params"]
    meta = {"kind": "unlearned", "method": job["method"].name, "variant": job["variant"], "seed": m["seed"],
            "params": p, "param_hash": param_hash(p), "unlearn_seconds": seconds, "baseline": m["baseline"],
            "genes": m["base_meta"].get("genes", []), "report": dict(ctx.report)}
    frame = ctx.trajectory.frame()
    if frame.empty:
        frame = pd.DataFrame({"epoch": []})
    write_tsv(frame, m["out"]["trajectory"])
    write_cells(model, job["X"], job["adata"], m["out"])
    save_checkpoint(model, m["out"]["model"], meta)


def _method_inputs(method, inp: dict, adata, part) -> dict:
    """The extra inputs a method declared (``MethodSpec.needs``: paths from the rule), plus the barcodes of
    its forget / retain / validation rows to join them with; nothing for a method that declared none."""
    if not method.needs:
        return {}
    missing = [n for n in method.needs if n not in inp]
    if missing:
        raise ScunlearnError(f"method {method.name} needs the inputs {missing}, which the unlearn rule did not give")
    names = adata.obs_names
    return {**{n: inp[n] for n in method.needs},
            "barcodes": {k: list(map(str, names[getattr(part, k)])) for k in ("forget", "retain", "validation")}}


def stage_sisa_shards(inp, out, params, threads):
    """SISA's up-front training: S shards of the training cells, one VAE each (the baseline's recipe)."""
    from scunlearn.methods.sisa import shard_seed, train_shards
    from scunlearn.stages.common import setup_job
    from scunlearn.vae.checkpoints import save_checkpoint
    from scunlearn.vae.model import VAEConfig

    seed, device, adata, X, part = setup_job(inp, params, threads)
    S, tr = int(params["shards"]), params["train"]
    cfg = VAEConfig(n_genes=adata.n_vars, **params["model"])
    log.info("sisa %s: %d training cells in %d shards, validating on %d; seed %d",
             params["variant"], len(part.train), S, len(part.validation), seed)
    t0 = time.perf_counter()
    ens, shards, hists = train_shards(X, adata.obs_names, part.train, part.validation, S, cfg, tr, seed)
    meta = {"kind": "sisa_shards", "variant": params["variant"], "seed": seed, "n_shards": S,
            "shard_sizes": [len(c) for c in shards], "shard_seeds": [shard_seed(seed, k) for k in range(S)],
            "train": tr, "train_seconds": time.perf_counter() - t0, "genes": list(map(str, adata.var_names)),
            "param_hash": param_hash([params["model"], tr, S])}
    write_tsv(pd.concat(hists, ignore_index=True), out["history"])
    write_json({"seed": seed, "n_shards": S, "sizes": [len(c) for c in shards], "shards": shards}, out["assignment"])
    save_checkpoint(ens, out["model"], meta)
