"""Frozen-critic adversarial unlearning (paper §IV-C): pre-trained attackers frozen, only the VAE moves.

Critics are trained on the baseline's features of forget cells vs the validation cells
matched to them (see :class:`~scunlearn.methods.common.MembershipSet`), then frozen.
The VAE minimises ``retain_weight`` · L_retain + L_critic where

* L_retain is the per-gene negative ELBO of a retain batch (≈ 0.9 nats; see
  :mod:`.common` for why per gene: the paper's λ = 5 / 10 were set for a per-element loss),
* L_critic = mean over critics and forget cells of softplus(logit) = BCE(logit, "non-member"),
  ≈ 0.7 for an undecided critic: the same order as L_retain, as in the paper.

Trajectory: epoch 0 = the baseline, then one row per epoch with both losses, each term's
gradient share ‖∇θ term‖ / Σ‖∇θ term‖ (mean over batches; the retain term with its
weight), the critics' mean score on forget cells, the movement columns ``forget_loss`` /
``val_loss`` / ``loss_gap`` (per gene, z = μ), and a shadow AUC every ``shadow_every``
epochs; ``phase == "final"`` = the returned model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from scunlearn.membership.attackers import feature_grad, fit_attacker
from scunlearn.methods.common import MembershipSet, grad_norm, per_gene_loss, retain_batches, shares
from scunlearn.methods.context import UnlearnContext
from scunlearn.vae.model import VAE, set_training
from scunlearn.vae.train import adam


def frozen_critic(ctx: UnlearnContext) -> VAE:
    """Minimise retain_weight · per-gene retain loss + the frozen critics' membership score on forget cells."""
    p, model = ctx.params, ctx.model
    members = MembershipSet.build(model, ctx, p["match_k"])
    ctx.trajectory.log(epoch=0, phase="baseline", **members.losses(model))
    feats, y = members.features(model), members.y.cpu().numpy()
    critics = []
    for i in range(p["n_critics"]):
        c = fit_attacker(feats, y, p["critic"], seed=ctx.seed * 1000 + i).to(ctx.device)
        c.eval()  # eval: no dropout, no spectral-norm power iteration: the critic is a constant
        c.requires_grad_(False)
        critics.append(c)
    params = list(model.parameters())
    opt = adam(params, p["lr"])
    gen = torch.Generator().manual_seed(ctx.seed)
    torch.manual_seed(ctx.seed)
    ctx.trajectory.expect("train", p["epochs"])
    for epoch in range(1, p["epochs"] + 1):
        tot = {"retain": 0.0, "critic": 0.0}
        sh = []
        batches = retain_batches(len(ctx.retain), p["batch_size"], gen, ctx.device)
        for b in batches:
            set_training(model, True)
            retain_loss = per_gene_loss(model, ctx.retain, rows=b)
            f = feature_grad(model, ctx.forget)
            # membership score: the critics' mean log-odds that forget cells are members,
            # pushed towards "non-member" through softplus(logit) = BCE(logit, label 0)
            critic_loss = torch.stack([F.softplus(c(f)).mean() for c in critics]).mean()
            g_r = torch.autograd.grad(p["retain_weight"] * retain_loss, params, allow_unused=True)
            g_c = torch.autograd.grad(critic_loss, params, allow_unused=True)
            sh.append(shares({"retain": grad_norm(g_r), "critic": grad_norm(g_c)}))
            for q, a, c in zip(params, g_r, g_c):
                q.grad = None if a is None and c is None else (0 if a is None else a) + (0 if c is None else c)
            opt.step()
            opt.zero_grad(set_to_none=True)
            tot["retain"] += float(retain_loss.detach())
            tot["critic"] += float(critic_loss.detach())
        with torch.no_grad():
            f = feature_grad(model, ctx.forget)
            score = float(torch.stack([torch.sigmoid(c(f)).mean() for c in critics]).mean())
        row = dict(epoch=epoch, phase="train", **members.losses(model),
                   retain_loss=tot["retain"] / len(batches), critic_loss=tot["critic"] / len(batches),
                   **{k: float(np.mean([s[k] for s in sh])) for k in sh[0]}, critic_score=score)
        if p["shadow_every"] and epoch % p["shadow_every"] == 0:
            row["shadow_auc"] = members.shadow(model, p["shadow"], ctx.seed + epoch)
        ctx.trajectory.log(**row)
    model.eval()
    ctx.trajectory.log(epoch=p["epochs"], phase="final", **members.losses(model))
    return model
