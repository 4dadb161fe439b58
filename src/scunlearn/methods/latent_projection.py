"""Latent projection: remove the forget set's direction from the encoder's μ, then re-fit the decoder on retain.

Future work 2 of "Machine Unlearning for Single-Cell VAEs: Fishing for Privacy" ("latent
space projection could directly remove the 'cluster direction' in latent space rather
than modifying decoder parameters").

1. **Direction.** A unit vector d in latent space separating the forget cells' μ from
   the retain cells' μ (eval mode, all cells of both sets), ``direction``:

   * ``mean_diff`` (default): d ∝ mean μ_F − mean μ_R, the direction the cluster's
     centre sits in; no covariance estimate, robust with ~30 forget cells.
   * ``lda``: regularised Fisher LDA, d ∝ (Σ_γ)⁻¹ (mean μ_F − mean μ_R) with Σ the pooled
     within-set covariance and Σ_γ = (1 − γ) Σ + γ (tr Σ / k) I (shrinkage γ =
     ``shrinkage`` towards the scaled identity, k = latent dimension): the most
     discriminating direction. γ = 1 gives ``mean_diff``.

2. **Projection, folded into the weights.** μ(x) = W h(x) + b becomes (I − d dᵀ)(W h + b):
   W ← (I − d dᵀ) W, b ← (I − d dᵀ) b. So μ(x)·d = 0 for every input and the model stays
   a plain VAE checkpoint (same architecture, nothing to apply at inference). Only the μ
   head changes: the encoder's hidden layers and the log-variance head are untouched
   (so the spread of z along d, Σ_i d_i² σ_i², is left as it was).

3. **Decoder-only fine-tuning** on retain cells with the shared recipe of
   :func:`~scunlearn.methods.common.finetune` (``epochs``, ``lr``, ``batch_size``,
   ``patience``), with every encoder parameter (hidden layers, μ and log-variance heads)
   frozen: the decoder re-learns to decode retain cells from the projected codes, and
   the encoder, hence the projection, is left bit-identical.

Trajectory: epoch 0 = the baseline; a ``project`` row (epoch 0) after the projection with
``separation`` = the forget-minus-retain difference of mean μ along d before it; then
``finetune`` rows; ``final`` = the returned model.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from scunlearn.methods.common import MembershipSet, finetune
from scunlearn.methods.context import UnlearnContext
from scunlearn.methods.retain_finetune import log_finetune_epoch
from scunlearn.vae.model import VAE, cell_terms

log = logging.getLogger(__name__)

DIRECTIONS = ("mean_diff", "lda")


def fit_direction(mu_forget: np.ndarray, mu_retain: np.ndarray, kind: str = "mean_diff",
                  shrinkage: float = 0.1) -> np.ndarray:
    """Unit direction (float64) separating forget from retain latent means; oriented forget − retain."""
    mf, mr = np.asarray(mu_forget, dtype=np.float64), np.asarray(mu_retain, dtype=np.float64)
    diff = mf.mean(0) - mr.mean(0)
    if kind == "mean_diff":
        d = diff
    elif kind == "lda":
        k = mf.shape[1]
        resid = np.vstack([mf - mf.mean(0), mr - mr.mean(0)])
        cov = resid.T @ resid / max(len(resid) - 2, 1)
        target = np.trace(cov) / k * np.eye(k)
        d = np.linalg.solve((1 - shrinkage) * cov + shrinkage * target, diff)
    else:
        raise ValueError(f"latent_projection: unknown direction '{kind}'; one of {DIRECTIONS}")
    norm = np.linalg.norm(d)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("latent_projection: forget and retain cells have the same mean μ; no direction to remove")
    return d / norm


@torch.no_grad()
def project_mu_head(model: VAE, d: torch.Tensor) -> None:
    """Fold (I − d dᵀ) into the μ head: afterwards μ(x)·d = 0 for every x (d a unit vector)."""
    d = d.to(dtype=torch.float64, device=model.mu.weight.device)
    proj = torch.eye(len(d), dtype=torch.float64, device=d.device) - torch.outer(d, d)
    W, b = model.mu.weight, model.mu.bias
    W.copy_((proj @ W.double()).to(W.dtype))
    b.copy_((proj @ b.double()).to(b.dtype))


def encoder_parameters(model: VAE) -> list[torch.nn.Parameter]:
    """The encoder's parameters: hidden layers and both heads (μ and log σ²)."""
    return [*model.encoder.parameters(), *model.mu.parameters(), *model.logvar.parameters()]


def latent_projection(ctx: UnlearnContext) -> VAE:
    """Project the forget direction out of the μ head, then fine-tune the decoder only on retain."""
    p, model = ctx.params, ctx.model
    model.eval()
    members = MembershipSet.build(model, ctx, p["match_k"])
    ctx.trajectory.log(epoch=0, step=0, phase="baseline", **members.losses(model))
    mu_f = cell_terms(model, ctx.forget, np.arange(len(ctx.forget))).mu.double().cpu().numpy()
    mu_r = cell_terms(model, ctx.retain, np.arange(len(ctx.retain))).mu.double().cpu().numpy()
    d = fit_direction(mu_f, mu_r, p["direction"], p["shrinkage"])
    separation = float(mu_f.mean(0) @ d - mu_r.mean(0) @ d)
    log.info("%s: %s direction, forget − retain mean μ along it %.4g (‖mean diff‖ %.4g)", ctx.trajectory.name,
             p["direction"], separation, float(np.linalg.norm(mu_f.mean(0) - mu_r.mean(0))))
    project_mu_head(model, torch.as_tensor(d))
    ctx.trajectory.log(epoch=0, step=0, phase="project", **members.losses(model), separation=separation)

    frozen = encoder_parameters(model)
    for q in frozen:
        q.requires_grad_(False)  # Adam skips parameters without gradients: the encoder cannot move
    try:
        if p["epochs"] > 0:
            finetune(model, ctx, epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], patience=p["patience"],
                     on_epoch=log_finetune_epoch(ctx, members, model))
    finally:
        for q in frozen:
            q.requires_grad_(True)
    model.eval()
    last_epoch = int(ctx.trajectory.rows[-1]["epoch"])
    ctx.trajectory.log(epoch=last_epoch, step=0, phase="final", **members.losses(model))
    return model
