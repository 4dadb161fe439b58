"""Extragradient co-training (paper §IV-C, Chavdarova et al.): the VAE and attackers play a zero-sum game.

Attackers minimise A = balanced BCE of forget (member) vs matched validation (non-member) cells;
the VAE minimises retain_weight · retain ELBO loss − A. Both players take a true
extragradient step (extrapolate, re-evaluate, update from the saved point), the attackers
with a learning rate ``attacker_lr_ratio`` × the VAE's (TTUR). A shadow attacker's AUC
(forget vs matched validation, grouped folds) is logged every epoch and drives early stopping.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..audit.attack import Attacker, bce_balanced, feature_grad
from ..model import VAE
from ..optim import ExtraGradient
from . import register
from .common import MembershipSet, retain_batches
from .context import UnlearnContext
from .frozen_critic import SHADOW


@register("extragradient", {
    "retain_weight": 10.0, "n_attackers": 3, "epochs": 50, "lr": 1e-4, "attacker_lr_ratio": 5.0,
    "batch_size": 128, "validation_per_forget": 4, "match_k": 7,
    "attacker": {"hidden": [256, 256], "dropout": 0.3},
    "shadow": SHADOW,
    "early_stop": {"target": 0.5, "tolerance": 0.05, "patience": 10, "min_epochs": 5},
})
def extragradient(ctx: UnlearnContext) -> VAE:
    """Co-train VAE and attackers with extragradient steps; keep the epoch whose shadow AUC is nearest target."""
    p, model = ctx.params, ctx.model
    torch.manual_seed(ctx.seed)
    members = MembershipSet.build(model, ctx, p["match_k"])
    feats0 = members.features(model)
    attackers = []
    for _ in range(p["n_attackers"]):
        a = Attacker(feats0.shape[1], tuple(p["attacker"]["hidden"]), p["attacker"]["dropout"]).to(ctx.device)
        a.set_standardisation(torch.as_tensor(feats0, dtype=torch.float32, device=ctx.device))
        attackers.append(a)
    att_params = [q for a in attackers for q in a.parameters()]
    vae_params = list(model.parameters())
    opt_vae = torch.optim.Adam(vae_params, lr=p["lr"])
    opt_att = torch.optim.Adam(att_params, lr=p["lr"] * p["attacker_lr_ratio"])
    eg = ExtraGradient([opt_vae, opt_att])
    gen = torch.Generator().manual_seed(ctx.seed)
    n_val = p["validation_per_forget"] * len(ctx.forget)
    es = p["early_stop"]
    best_gap, best_state, best_epoch, bad = np.inf, copy.deepcopy(model.state_dict()), -1, 0

    for epoch in range(p["epochs"]):
        tot_r = tot_a = 0.0
        batches = retain_batches(len(ctx.retain), p["batch_size"], gen, ctx.device)
        for b in batches:
            xr = ctx.retain[b]
            xm, ym = members.batch(n_val, gen)
            last = {}

            def grads():
                model.train()
                for a in attackers:
                    a.train()
                retain_loss = model.loss(xr, beta=1.0)
                f = feature_grad(model, xm)
                att_loss = torch.stack([bce_balanced(a(f), ym) for a in attackers]).mean()
                vae_loss = p["retain_weight"] * retain_loss - att_loss
                g_vae = torch.autograd.grad(vae_loss, vae_params, retain_graph=True, allow_unused=True)
                g_att = torch.autograd.grad(att_loss, att_params, allow_unused=True)
                for q, g in zip(vae_params + att_params, g_vae + g_att):
                    q.grad = g
                last.update(retain=float(retain_loss.detach()), att=float(att_loss.detach()))

            eg.step(grads)
            tot_r += last["retain"]
            tot_a += last["att"]
        sa = members.shadow(model, p["shadow"], ctx.seed + epoch)
        gap = abs(sa - es["target"])
        if gap < best_gap:
            best_gap, best_state, best_epoch, bad = gap, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
        ctx.trajectory.log(epoch=epoch, retain_loss=tot_r / len(batches), attacker_loss=tot_a / len(batches),
                           shadow_auc=sa, best=(best_epoch == epoch))
        if epoch + 1 >= es["min_epochs"] and (gap <= es["tolerance"] or bad >= es["patience"]):
            break
    model.load_state_dict(best_state)
    model.eval()
    return model
