"""Stages of the unlearning rules: one method variant on one forget set and seed, and SISA's shards."""

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
    from scunlearn.methods import get_method, resolve_params
    from scunlearn.methods.context import Trajectory, UnlearnContext
    from scunlearn.stages.common import setup_job, write_cells
    from scunlearn.vae.checkpoints import check_genes, load_checkpoint, save_checkpoint

    seed, device, adata, X, part = setup_job(inp, params, threads)
    method = get_method(params["method"])
    p = resolve_params(params["method"], params["params"], params["variant"])
    model, base_meta = load_checkpoint(inp["baseline"], device)
    check_genes(model, adata, inp["baseline"], base_meta)
    traj = Trajectory(params["variant"])
    ctx = UnlearnContext.build(model, X, part, seed, p, traj, inputs=_method_inputs(method, inp, adata, part))
    log.info("unlearning with %s (%s) from %s: forget %d, retain %d, validation %d; params %s",
             params["variant"], method.name, inp["baseline"], len(part.forget), len(part.retain),
             len(part.validation), json.dumps(p))
    t0 = time.perf_counter()
    model = method.fn(ctx)
    meta = {"kind": "unlearned", "method": method.name, "variant": params["variant"], "seed": seed,
            "params": p, "param_hash": param_hash(p), "unlearn_seconds": time.perf_counter() - t0,
            "baseline": str(inp["baseline"]), "genes": base_meta.get("genes", []), "report": dict(ctx.report)}
    frame = traj.frame()
    if frame.empty:
        frame = pd.DataFrame({"epoch": []})
    write_tsv(frame, out["trajectory"])
    write_cells(model, X, adata, out)
    save_checkpoint(model, out["model"], meta)


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
