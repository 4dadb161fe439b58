"""Selective Synaptic Dampening (Foster, Schoepf & Brintrup, "Fast Machine Unlearning Without
Retraining Through Selective Synaptic Dampening", AAAI 2024): no training, one pass over
the weights.

Importances are diagonal Fisher estimates: the mean over cells of each parameter's squared
gradient of the per-gene loss (:func:`~scunlearn.methods.fisher.cell_loss_fisher`, with the
loss fisher uses: a cell's negative ELBO / n_genes, eval mode, z = μ; the source used the
classifier's cross-entropy). I_f on the forget cells, I_D on the whole training set
D = retain ∪ forget. A parameter is *selected* where I_f > α · I_D (it matters far more to
the forget cells than to the data as a whole) and multiplied by min(λ · I_D / I_f, 1); every
other parameter is left bit-for-bit as it was. Every parameter tensor takes part (weights,
biases, LayerNorm, the NB inverse dispersions), as in the source.

I_D is the cell-weighted mean (n_f · I_f + n_r · I_r) / (n_f + n_r), I_r the importance on
the retain cells: exactly the mean over D when ``data_cells`` is 0 (all retain cells), an
estimate from ``data_cells`` seeded retain cells otherwise (the forget part is always exact).

Defaults are the source's: α = 10 (selection), λ = 1 (dampening). Because I_D contains the
forget cells, I_f > α · I_D is possible only if n_f / (n_f + n_r) < 1 / α.

Trajectory: epoch 0 = the baseline; ``phase == "final"`` = the dampened model, with the
fraction of parameter entries dampened (also in the checkpoint's report) and the mean
dampening factor over them.
"""

from __future__ import annotations

import logging

import torch

from scunlearn.methods.common import MembershipSet
from scunlearn.methods.context import UnlearnContext
from scunlearn.methods.fisher import cell_loss_fisher
from scunlearn.vae.model import VAE

log = logging.getLogger(__name__)


def importances(model: VAE, cells: torch.Tensor, chunk_size: int) -> dict[str, torch.Tensor]:
    """Mean over ``cells`` of squared per-cell gradients of the per-gene loss (eval mode, z = μ)."""
    model.eval()
    return cell_loss_fisher(model, cells, chunk_size)


def data_importances(model: VAE, ctx: UnlearnContext, I_f: dict[str, torch.Tensor], data_cells: int,
                     chunk_size: int) -> dict[str, torch.Tensor]:
    """I_D over retain ∪ forget: (n_f · I_f + n_r · I_r) / (n_f + n_r), I_r on all or ``data_cells`` retain cells."""
    nf, nr = len(ctx.forget), len(ctx.retain)
    retain = ctx.retain
    if 0 < data_cells < nr:
        gen = torch.Generator().manual_seed(ctx.seed)
        retain = retain[torch.randperm(nr, generator=gen)[:data_cells].to(ctx.device)]
    I_r = importances(model, retain, chunk_size)
    return {k: (nf * I_f[k] + nr * I_r[k]) / (nf + nr) for k in I_f}


@torch.no_grad()
def dampen(model: VAE, I_f: dict[str, torch.Tensor], I_D: dict[str, torch.Tensor], alpha: float,
           lam: float) -> tuple[int, int, float]:
    """θ ← θ · min(λ · I_D / I_f, 1) where I_f > α · I_D, in place.

    Returns (entries selected, entries in all, mean factor over the selected ones).
    """
    selected, total, factors = 0, 0, 0.0
    for k, q in model.named_parameters():
        f, d = I_f[k], I_D[k]
        sel = f > alpha * d
        factor = torch.clamp(lam * d[sel] / f[sel], max=1.0)
        q[sel] = q[sel] * factor
        selected += int(sel.sum())
        total += q.numel()
        factors += float(factor.double().sum())
    return selected, total, factors / selected if selected else 1.0


def ssd(ctx: UnlearnContext) -> VAE:
    """Dampen the parameters far more important to the forget cells than to the training data (Foster et al. 2024)."""
    p, model = ctx.params, ctx.model
    model.eval()
    members = MembershipSet.build(model, ctx, p["match_k"])
    ctx.trajectory.log(epoch=0, phase="baseline", **members.losses(model))
    I_f = importances(model, ctx.forget, p["chunk_size"])
    I_D = data_importances(model, ctx, I_f, p["data_cells"], p["chunk_size"])
    selected, total, mean_factor = dampen(model, I_f, I_D, p["alpha"], p["lambda"])
    frac = selected / total
    log.info("%s: dampened %d of %d parameter entries (%.4g%%), mean factor %.4g", ctx.trajectory.name,
             selected, total, 100 * frac, mean_factor)
    ctx.report["ssd_dampened_fraction"] = frac
    model.eval()
    ctx.trajectory.log(epoch=1, phase="final", **members.losses(model), dampened_fraction=frac,
                       dampened=selected, mean_factor=mean_factor)
    return model
