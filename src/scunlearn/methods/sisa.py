"""SISA — Sharded, Isolated, Sliced, Aggregated training (Bourtoule et al. 2021, "Machine
Unlearning", IEEE S&P): exact unlearning by retraining only what saw the forget cells.

Up front (rule ``sisa_shards``, once per variant and seed) the training cells (train =
retain ∪ forget of every forget set) are split into S random, seeded, disjoint shards and one
VAE is trained on each from scratch, with the baseline's recipe (``config["train"]``: Adam
lr / batch_size / max_epochs / KL warm-up, early stopping on the validation ELBO with
patience, :func:`scunlearn.vae.train.fit`). The model is the :class:`~scunlearn.vae.shards.ShardEnsemble`
of the S VAEs (its per-cell ELBO = the mean of the shards' ELBOs, see there). No slicing
(the paper's checkpoints within a shard): a shard is retrained from its start.

Unlearning (:func:`sisa`) retrains from scratch, with the same recipe and the same seed, exactly
the shards that hold forget cells, on their cells minus the forget cells; every other shard is
reused bit-identical. The result is exactly a model never trained on the forget cells (under
SISA's own training distribution, which is not the baseline's: each shard sees only 1/S of
the cells). Two costs: the up-front shard training (the ``sisa_shards`` job, reported as
``setup_cost_vs_retrain``) and one request (the unlearn job, ``cost_vs_retrain``). With random
sharding a scattered forget set hits every shard and a request costs about a full retrain.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from scunlearn import ScunlearnError
from scunlearn.costs import Progress
from scunlearn.io import read_json
from scunlearn.methods.common import MembershipSet, _rng_devices
from scunlearn.methods.context import UnlearnContext
from scunlearn.vae.checkpoints import load_checkpoint
from scunlearn.vae.model import VAEConfig, build_vae
from scunlearn.vae.shards import ShardEnsemble
from scunlearn.vae.train import fit

log = logging.getLogger(__name__)

#: the keys of ``config["train"]`` a shard is trained with (the baseline's recipe)
RECIPE = ("lr", "batch_size", "max_epochs", "kl_warmup_epochs", "patience")


def shard_seed(seed: int, k: int) -> int:
    """The seed of shard ``k`` of a model seed: its initialisation, batches, z draws and dropout."""
    return int(seed) * 1000 + int(k)


def assign_shards(barcodes, n_shards: int, seed: int) -> list[list[str]]:
    """A random, seeded partition of ``barcodes`` (the training cells) into ``n_shards`` near-equal shards.

    Each shard keeps its cells in the order given (the data's row order), the order its VAE is trained in.
    """
    barcodes = np.asarray(barcodes).astype(str)
    if n_shards > len(barcodes):
        raise ScunlearnError(f"methods.<variant>.params.shards: {n_shards} shards for {len(barcodes)} training cells")
    perm = np.random.default_rng(int(seed)).permutation(len(barcodes))
    return [barcodes[np.sort(p)].tolist() for p in np.array_split(perm, n_shards)]


def train_shard(X: torch.Tensor, train_rows, val_rows, cfg: VAEConfig, recipe: dict, seed: int):
    """One shard's VAE trained from scratch on rows ``train_rows`` of X: (model, history).

    Initialisation, batch order, z draws and dropout all come from ``seed`` inside a forked
    RNG, so the same rows (in the same order) and seed give a bit-identical shard on CPU.
    """
    missing = [k for k in RECIPE if k not in recipe]
    if missing:
        raise ScunlearnError(f"sisa: the shard training recipe lacks train.{', train.'.join(missing)}")
    if len(train_rows) < 2:
        raise ScunlearnError(f"sisa: a shard has {len(train_rows)} cells left to train on; "
                             "use fewer shards (methods.<variant>.params.shards)")
    with torch.random.fork_rng(devices=_rng_devices(X.device)):
        torch.manual_seed(int(seed))
        model = build_vae(cfg).to(X.device)
        hist = fit(model, X, train_rows, val_rows, lr=recipe["lr"], batch_size=recipe["batch_size"],
                   max_epochs=recipe["max_epochs"], kl_warmup_epochs=recipe["kl_warmup_epochs"],
                   patience=recipe["patience"], seed=int(seed))
    model.eval()
    return model, hist


def train_shards(X: torch.Tensor, barcodes, train_rows, val_rows, n_shards: int, cfg: VAEConfig, recipe: dict,
                 seed: int):
    """SISA's up-front training: (ensemble, shards as barcode lists, per-shard histories).

    The rows ``train_rows`` of X (barcodes ``barcodes[train_rows]``) are split by
    :func:`assign_shards`; shard k is trained by :func:`train_shard` with seed
    :func:`shard_seed` ``(seed, k)``, validating on ``val_rows``.
    """
    barcodes = np.asarray(barcodes).astype(str)
    row_of = {b: i for i, b in enumerate(barcodes)}
    shards = assign_shards(barcodes[np.asarray(train_rows)], n_shards, seed)
    models, hists = [], []
    progress = Progress(len(shards), "shard")
    for k, cells in enumerate(shards):
        model, hist = train_shard(X, [row_of[b] for b in cells], val_rows, cfg, recipe, shard_seed(seed, k))
        log.info("%s trained (shard %d): %d cells, best val ELBO %.3f after %d epochs  %s", progress.count(k + 1), k,
                 len(cells), hist["val_elbo"].max(), len(hist), progress.timing(k + 1))
        models.append(model)
        hists.append(hist.assign(shard=k))
    return ShardEnsemble(models), shards, hists


def sisa(ctx: UnlearnContext) -> ShardEnsemble:
    """Retrain from scratch the shards that hold forget cells; reuse the others unchanged.

    ``ctx.inputs``: ``shards`` (the shard ensemble checkpoint, its meta holding the training
    recipe and seed), ``shard_assignment`` (barcodes per shard), ``setup_benchmark`` (the shard
    job's benchmark: the up-front cost), ``barcodes`` (of this context's forget / retain rows).
    ``ctx.model`` (the baseline) is not used. Trajectory: the ensemble before, one row per
    retrained shard, the final ensemble. Reports ``sisa_shards``, ``sisa_shards_retrained``,
    ``setup_wall_s``.
    """
    from scunlearn.costs import read_benchmark

    p, inputs = ctx.params, ctx.inputs
    for key in ("shards", "shard_assignment", "barcodes"):
        if key not in inputs:
            raise ScunlearnError(f"sisa: the unlearn job was not given its '{key}' input (the rule's sisa inputs)")
    ens, meta = load_checkpoint(inputs["shards"], ctx.device)
    if not isinstance(ens, ShardEnsemble):
        raise ScunlearnError(f"{inputs['shards']}: not a shard ensemble checkpoint")
    S = len(ens)
    if S != p["shards"]:
        raise ScunlearnError(f"{inputs['shards']}: {S} shards, but methods.<variant>.params.shards is {p['shards']}; "
                             "rerun the sisa_shards rule")
    shards = read_json(inputs["shard_assignment"])["shards"]
    if len(shards) != S:
        raise ScunlearnError(f"{inputs['shard_assignment']}: {len(shards)} shards, the ensemble has {S}")
    recipe, seed = meta.get("train", {}), int(meta.get("seed", ctx.seed))

    forget_bc = set(map(str, inputs["barcodes"]["forget"]))
    retain_row = {str(b): i for i, b in enumerate(inputs["barcodes"]["retain"])}
    hit = [k for k, cells in enumerate(shards) if forget_bc.intersection(cells)]
    outside = len(forget_bc - {b for cells in shards for b in cells})
    if outside:
        log.info("sisa: %d forget cells are in no shard (never trained on): nothing to unlearn for them", outside)
    log.info("sisa: forget cells in %d of %d shards: %s", len(hit), S, hit)

    members = MembershipSet.build(ens, ctx, p["match_k"])
    ctx.trajectory.log(epoch=0, step=0, phase="baseline", shard=-1, **members.losses(ens))
    nv = len(ctx.validation)
    ctx.trajectory.expect("retrain", len(hit), unit="retrained shard")
    for i, k in enumerate(hit, start=1):
        keep = [b for b in shards[k] if b not in forget_bc]
        lost = [b for b in keep if b not in retain_row]
        if lost:
            raise ScunlearnError(f"{inputs['shard_assignment']}: shard {k} holds {len(lost)} cells that are neither "
                                 f"forget nor retain cells (e.g. {lost[0]}): it belongs to another split; rerun "
                                 "the sisa_shards rule")
        rows = torch.as_tensor([retain_row[b] for b in keep], dtype=torch.long, device=ctx.device)
        X = torch.cat([ctx.retain[rows], ctx.validation])
        t0 = time.perf_counter()
        model, hist = train_shard(X, np.arange(len(keep)), np.arange(len(keep), len(keep) + nv),
                                  ens.cfg.shard, recipe, shard_seed(seed, k))
        ens.shards[k] = model
        best = hist.loc[hist["val_elbo"].idxmax()]
        ctx.trajectory.log(epoch=i, step=k, phase="retrain", shard=k, n_cells=len(keep),
                           n_removed=len(shards[k]) - len(keep), epochs_run=len(hist),
                           val_elbo=float(best["val_elbo"]), seconds=time.perf_counter() - t0,
                           **members.losses(ens))
    ens.eval()
    ctx.trajectory.log(epoch=len(hit), step=0, phase="final", shard=-1, **members.losses(ens))
    ctx.report.update(sisa_shards=S, sisa_shards_retrained=len(hit),
                      setup_wall_s=read_benchmark(inputs.get("setup_benchmark", "")).get("s", float("nan")))
    return ens

