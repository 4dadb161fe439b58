"""Fisher scrubbing (paper §IV-D): θ ← θ + α (F + λI)⁻¹ ∇θ L_F(θ), then fine-tuning on retain.

F is the diagonal empirical Fisher of the retain set (mean of per-cell squared gradients
of the per-cell loss, computed with ``torch.func``); L_F is the forget-set loss. The
update ascends the forget loss, least along directions that matter to the retained cells.
The per-cell loss is the negative ELBO divided by the number of genes, a per-element
scale like the reference code's loss: with the NB log-likelihood summed over 2,000 genes
the paper's α and λ make steps three orders of magnitude too large and the model diverges.
If the forget loss still becomes non-finite, scrubbing stops at the last finite step.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch.func import functional_call, grad, vmap

from ..model import VAE
from ..train import fit
from . import register
from .context import UnlearnContext

log = logging.getLogger(__name__)


def diagonal_fisher(model: torch.nn.Module, loss_fn: Callable, inputs: tuple[torch.Tensor, ...],
                    chunk_size: int = 256) -> dict[str, torch.Tensor]:
    """Mean over samples of squared per-sample gradients, per parameter.

    ``loss_fn(call, *sample)`` gets ``call(*args)`` = the model applied with the current
    parameters, and one sample with a leading batch dimension of 1; it returns a scalar.
    """
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p, *sample):
        return loss_fn(lambda *a: functional_call(model, p, a), *(s.unsqueeze(0) for s in sample))

    per_sample = vmap(grad(one), in_dims=(None,) + (0,) * len(inputs), chunk_size=chunk_size)
    n = len(inputs[0])
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    for s in range(0, n, chunk_size):
        g = per_sample(params, *(t[s:s + chunk_size] for t in inputs))
        for k in fisher:
            fisher[k] += g[k].pow(2).sum(0)
    return {k: v / n for k, v in fisher.items()}


def _cell_loss(call, x):
    """Negative ELBO of the cells, averaged over genes (see module docstring), summed over cells."""
    t = call(x)
    return ((t["nll"] + t["kl"]) / x.shape[-1]).sum()


@register("fisher", {
    "alpha": 1e-4, "damping": 0.1, "steps": 100, "fisher_cells": 1000, "chunk_size": 128,
    "finetune_epochs": 10, "finetune_lr": 1e-3, "batch_size": 128, "patience": 5,
})
def fisher(ctx: UnlearnContext) -> VAE:
    """Scrub with the inverse damped diagonal Fisher of the retain set, then fine-tune on retain."""
    p, model = ctx.params, ctx.model
    model.eval()  # deterministic per-cell loss (no dropout, z = μ) for Fisher and scrubbing
    gen = torch.Generator().manual_seed(ctx.seed)
    sub = torch.randperm(len(ctx.retain), generator=gen)[: p["fisher_cells"]].to(ctx.device)
    F = diagonal_fisher(model, _cell_loss, (ctx.retain[sub],), p["chunk_size"])
    params = dict(model.named_parameters())
    grads = None
    for step in range(p["steps"]):
        loss = _cell_loss(model, ctx.forget) / len(ctx.forget)
        if not torch.isfinite(loss):
            if grads is None:
                raise ValueError("fisher: the forget loss is not finite before scrubbing")
            with torch.no_grad():
                for (k, q), g in zip(params.items(), grads):  # undo the step that broke it
                    q.sub_(p["alpha"] * g / (F[k] + p["damping"]))
            log.warning("fisher: forget loss non-finite at step %d; stopped scrubbing at step %d", step, step - 1)
            break
        grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            for (k, q), g in zip(params.items(), grads):
                q.add_(p["alpha"] * g / (F[k] + p["damping"]))
        if step % 10 == 0 or step == p["steps"] - 1:
            ctx.trajectory.log(epoch=step, phase="scrub", forget_loss=float(loss.detach()))
    if p["finetune_epochs"] > 0:
        X = torch.cat([ctx.retain, ctx.validation])
        nr = len(ctx.retain)
        hist = fit(model, X, torch.arange(nr), torch.arange(nr, len(X)), lr=p["finetune_lr"],
                   batch_size=p["batch_size"], max_epochs=p["finetune_epochs"], kl_warmup_epochs=0,
                   patience=p["patience"], seed=ctx.seed)
        for r in hist.itertuples():
            ctx.trajectory.log(epoch=p["steps"] + r.epoch, phase="finetune", retain_loss=r.train_loss,
                               val_elbo=r.val_elbo)
    model.eval()
    return model
