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
    from scunlearn.methods import get_method, resolve_params
    from scunlearn.methods.compute import CellMeter
    from scunlearn.methods.context import Trajectory, UnlearnContext  # noqa: F401 (the members' code, below:
    from scunlearn.runtime import seed_everything  # imported here so that it is among the rule's code inputs)
    from scunlearn.stages.common import job_device, write_cells  # noqa: F401
    from scunlearn.vae.checkpoints import check_genes, load_checkpoint, save_checkpoint  # noqa: F401

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
    from scunlearn.vae.train import load_experiment

    adata, X, part = load_experiment(inp, device)
    from scunlearn.costs import log_units

    log_units(log, len(seeds), "models unlearned")
    log.info("unlearning with %s (%s): %d members (baseline seeds %s); forget %d, retain %d, validation %d; "
             "params %s", params["variant"], method.name, len(seeds), seeds, len(part.forget), len(part.retain),
             len(part.validation), json.dumps(p))
    members = [_Member(k, s, baselines[k], outs[k], _member_inputs(inp, k)) for k, s in enumerate(seeds)]
    if method.batched and len(members) > 1:
        log.info("the %d members unlearn together as one stacked model (%s)", len(members), method.batched)
        ctxs = [m.context(method, p, params["variant"], X, adata, part, device, threads, len(members))
                for m in members]
        t0 = time.perf_counter()
        models = method.batch_fn(ctxs)  # it counts each member's cell passes itself (ctx.report)
        secs = (time.perf_counter() - t0) / len(members)
        for m, ctx, model in zip(members, ctxs, models):
            m.write(method, p, params["variant"], ctx, model, secs, X, adata)
        return
    for m in members:
        ctx = m.context(method, p, params["variant"], X, adata, part, device, threads, len(members))
        t0 = time.perf_counter()
        with CellMeter() as meter:
            model = method.fn(ctx)
        ctx.report.setdefault("cell_passes", meter.cells)
        m.write(method, p, params["variant"], ctx, model, time.perf_counter() - t0, X, adata)


def _as_list(x) -> list:
    return [x] if isinstance(x, (str, bytes)) or not hasattr(x, "__iter__") else list(x)


def _member_inputs(inp, k: int) -> dict:
    """Member k's share of the job's inputs: per-member lists (a method's declared inputs) give their k-th file."""
    return {n: (_as_list(v)[k] if n not in ("adata", "split", "forget", "baseline", "code") else v)
            for n, v in dict(inp).items()}


class _Member:
    """One member of an unlearning job: its baseline seed, checkpoint, inputs and outputs."""

    def __init__(self, k: int, seed: int, baseline: str, out: dict, inputs: dict):
        self.k, self.seed, self.baseline, self.out, self.inputs = k, seed, str(baseline), out, inputs

    def context(self, method, p, variant, X, adata, part, device, threads, n_members):
        """Seed the RNG as a job of this seed alone would, load its baseline and build its context."""
        from scunlearn.methods.context import Trajectory, UnlearnContext
        from scunlearn.runtime import seed_everything
        from scunlearn.vae.checkpoints import check_genes, load_checkpoint

        seed_everything(self.seed, threads)
        model, self.base_meta = load_checkpoint(self.baseline, device)
        check_genes(model, adata, self.baseline, self.base_meta)
        log.info("member %d/%d: seed %d, from %s", self.k + 1, n_members, self.seed, self.baseline)
        traj = Trajectory(f"{variant}/seed{self.seed}" if n_members > 1 else variant)
        return UnlearnContext.build(model, X, part, self.seed, p, traj,
                                    inputs=_method_inputs(method, self.inputs, adata, part))

    def write(self, method, p, variant, ctx, model, seconds, X, adata) -> None:
        from scunlearn.stages.common import write_cells
        from scunlearn.vae.checkpoints import save_checkpoint

        meta = {"kind": "unlearned", "method": method.name, "variant": variant, "seed": self.seed,
                "params": p, "param_hash": param_hash(p), "unlearn_seconds": seconds,
                "baseline": self.baseline, "genes": self.base_meta.get("genes", []), "report": dict(ctx.report)}
        frame = ctx.trajectory.frame()
        if frame.empty:
            frame = pd.DataFrame({"epoch": []})
        write_tsv(frame, self.out["trajectory"])
        write_cells(model, X, adata, self.out)
        save_checkpoint(model, self.out["model"], meta)


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
