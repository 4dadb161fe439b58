"""Frozen-critic adversarial unlearning (paper §IV-C): pre-trained attackers frozen, only the VAE moves.

Critics are trained on the baseline's features of forget cells vs the validation cells
matched to them (see :class:`~scunlearn.methods.common.MembershipSet`), then frozen.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..audit.attack import feature_grad, fit_attacker
from ..model import VAE
from . import register
from .common import MembershipSet, retain_batches
from .context import UnlearnContext

ATTACKER = {"hidden": [256, 256], "dropout": 0.3, "lr": 1e-3, "weight_decay": 1e-4, "epochs": 300}
SHADOW = {"hidden": [256, 256], "dropout": 0.3, "lr": 1e-3, "weight_decay": 1e-4, "epochs": 100}


@register("frozen_critic", {
    "n_critics": 1, "retain_weight": 5.0, "epochs": 10, "lr": 1e-4, "batch_size": 128, "match_k": 7,
    "critic": ATTACKER, "shadow": SHADOW,
})
def frozen_critic(ctx: UnlearnContext) -> VAE:
    """Minimise retain_weight · retain ELBO loss + the frozen critics' membership score on forget cells."""
    p, model = ctx.params, ctx.model
    members = MembershipSet.build(model, ctx, p["match_k"])
    feats, y = members.features(model), members.y.cpu().numpy()
    critics = []
    for i in range(p["n_critics"]):
        c = fit_attacker(feats, y, p["critic"], seed=ctx.seed * 1000 + i).to(ctx.device)
        c.eval()  # eval: no dropout, no spectral-norm power iteration: the critic is a constant
        c.requires_grad_(False)
        critics.append(c)
    opt = torch.optim.Adam(model.parameters(), lr=p["lr"])
    gen = torch.Generator().manual_seed(ctx.seed)
    for epoch in range(p["epochs"]):
        tot_r = tot_c = 0.0
        batches = retain_batches(len(ctx.retain), p["batch_size"], gen, ctx.device)
        for b in batches:
            model.train()
            retain_loss = model.loss(ctx.retain[b], beta=1.0)
            f = feature_grad(model, ctx.forget)
            # membership score: the critics' mean log-odds that forget cells are members,
            # pushed towards "non-member" through softplus(logit) = BCE(logit, label 0)
            critic_loss = torch.stack([F.softplus(c(f)).mean() for c in critics]).mean()
            loss = p["retain_weight"] * retain_loss + critic_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_r += float(retain_loss.detach())
            tot_c += float(critic_loss.detach())
        with torch.no_grad():
            f = feature_grad(model, ctx.forget)
            score = float(torch.stack([torch.sigmoid(c(f)).mean() for c in critics]).mean())
        ctx.trajectory.log(epoch=epoch, retain_loss=tot_r / len(batches), critic_loss=tot_c / len(batches),
                           critic_score=score, shadow_auc=members.shadow(model, p["shadow"], ctx.seed + epoch))
    model.eval()
    return model
