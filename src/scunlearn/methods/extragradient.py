"""Extragradient co-training (paper §IV-C, Chavdarova et al.): the VAE and attackers play a zero-sum game.

Attackers minimise A = balanced BCE of forget (member) vs matched validation (non-member)
cells; the VAE minimises ``retain_weight`` · L_retain − A. Both players take a true
extragradient step (extrapolate, re-evaluate, update from the saved point), the attackers
with a learning rate ``attacker_lr_ratio`` × the VAE's (TTUR).

**Scale.** L_retain is the per-gene negative ELBO (≈ 0.9 nats; see :mod:`.common`), A a
BCE (≈ 0.7 at chance, the mean over the ``n_attackers`` attackers, trained as one batched
model): the same order, as in the paper's per-element loss, so λ = 5 and λ = 10 weigh the
two terms differently. With L_retain summed over genes the attacker term had ~1% of the
gradient and λ did not matter. Each epoch's trajectory row has the
gradient share of each term in the VAE's update (‖∇θ λ·L_retain‖ and ‖∇θ A‖ over their sum,
mean over batches, at the extragradient's first evaluation).

**Early stopping** uses only forget, retain and validation cells. The default signal is the
LOSS gap: mean per-gene loss of forget cells minus that of their matched validation cells
(deterministic, z = μ). The baseline fits its members better (gap < 0); a model that never
saw the forget cells has no reason to fit them better than their unseen neighbours (gap ≈ 0,
the default ``target``). One epoch's gap moves by ±0.02 per gene on the demo, as much as
the whole baseline-to-retrain distance, so the signal is the mean over the last
``smoothing`` epochs (full windows only, the baseline never in them); the epoch whose
smoothed signal is nearest ``target`` is kept; training stops once it is within
``tolerance`` (after ``min_epochs``) or after ``patience`` epochs without getting nearer.
(Where a retrained model sits is unknown to the method: on the demo's structured set its
gap is +0.02 to +0.04, as the matched validation cells include other cell types.)
``signal: shadow_auc`` uses a fresh shadow attacker's grouped out-of-fold AUC instead
(smoothed the same way): noisier with ~30 forget cells.

Trajectory: epoch 0 = the baseline; one row per epoch (losses, gradient shares, movement
columns ``forget_loss`` / ``val_loss`` / ``loss_gap``, the smoothed signal, a shadow AUC
every ``shadow_every`` epochs); ``phase == "final"`` = the kept model.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from scunlearn.membership.attackers import BatchedAttackers, bce_balanced, feature_grad
from scunlearn.methods.common import MembershipSet, grad_norm, per_gene_loss, retain_batches, shares
from scunlearn.methods.context import UnlearnContext
from scunlearn.vae.model import VAE, set_training
from scunlearn.vae.optim import ExtraGradient
from scunlearn.vae.train import adam


def extragradient(ctx: UnlearnContext) -> VAE:
    """Co-train VAE and attackers with extragradient steps; keep the epoch whose smoothed signal is nearest target."""
    p, model = ctx.params, ctx.model
    torch.manual_seed(ctx.seed)
    members = MembershipSet.build(model, ctx, p["match_k"])
    base = members.losses(model)
    ctx.trajectory.log(epoch=0, phase="baseline", **base)
    feats0 = torch.as_tensor(members.features(model), dtype=torch.float32, device=ctx.device)
    # the attackers as one batched model (one batched matmul per layer, not one attacker after
    # another); 15 power iterations at the start, as torch's spectral_norm; each standardises
    # with the starting features
    n_att = p["n_attackers"]
    attackers = BatchedAttackers(n_att, feats0.shape[1], tuple(p["attacker"]["hidden"]),
                                 p["attacker"]["dropout"], init_power_iterations=15).to(ctx.device)
    f_mean, f_std = feats0.mean(0), feats0.std(0).clamp_min(1e-6)
    att_params = list(attackers.parameters())
    vae_params = list(model.parameters())
    opt_vae = adam(vae_params, p["lr"])
    opt_att = adam(att_params, p["lr"] * p["attacker_lr_ratio"])
    eg = ExtraGradient([opt_vae, opt_att])
    gen = torch.Generator().manual_seed(ctx.seed)
    n_val = p["validation_per_forget"] * len(ctx.forget)
    es = p["early_stop"]
    use_shadow = es["signal"] == "shadow_auc"
    history: list[float] = []
    window = min(es["smoothing"], p["epochs"])
    best_dist, best_state, best_epoch, bad = np.inf, copy.deepcopy(model.state_dict()), 0, 0
    ctx.trajectory.expect("train", p["epochs"], upper_bound=True)  # early_stop may end it sooner

    for epoch in range(1, p["epochs"] + 1):
        tot = {"retain": 0.0, "attacker": 0.0}
        sh = []
        batches = retain_batches(len(ctx.retain), p["batch_size"], gen, ctx.device)
        for b in batches:
            xm, ym = members.batch(n_val, gen)
            last: dict = {}

            def grads():
                set_training(model, True)
                set_training(attackers, True)
                retain_loss = per_gene_loss(model, ctx.retain, rows=b)
                f = (feature_grad(model, xm) - f_mean) / f_std
                # the mean of the attackers' balanced BCEs: one BCE over all (attacker, cell) pairs
                att_loss = bce_balanced(attackers(f.expand(n_att, *f.shape)).reshape(-1), ym.repeat(n_att))
                if last:
                    # the second evaluation: one backward of the VAE's objective λ·L_retain − A, whose
                    # gradient in the attackers' parameters is −∇ψ A (L_retain does not depend on them)
                    g = torch.autograd.grad(p["retain_weight"] * retain_loss - att_loss, vae_params + att_params,
                                            allow_unused=True)
                    for q, gq in zip(vae_params, g[:len(vae_params)]):
                        q.grad = torch.zeros_like(q) if gq is None else gq
                    for q, gq in zip(att_params, g[len(vae_params):]):
                        q.grad = None if gq is None else gq.neg_()
                    return
                # the first evaluation, at the saved point: each term's gradient apart, for the shares
                g_r = torch.autograd.grad(p["retain_weight"] * retain_loss, vae_params, allow_unused=True)
                g_a = torch.autograd.grad(att_loss, vae_params + att_params, allow_unused=True)
                g_av, g_att = g_a[:len(vae_params)], g_a[len(vae_params):]
                for q, r, a in zip(vae_params, g_r, g_av):  # the VAE minimises λ·L_retain − A
                    q.grad = (torch.zeros_like(q) if r is None else r) - (0 if a is None else a)
                for q, g in zip(att_params, g_att):
                    q.grad = g
                last.update(retain=float(retain_loss.detach()), attacker=float(att_loss.detach()),
                            **shares({"retain": grad_norm(g_r), "attacker": grad_norm(g_av)}))

            eg.step(grads)
            tot["retain"] += last["retain"]
            tot["attacker"] += last["attacker"]
            sh.append({k: v for k, v in last.items() if k.startswith("grad_share")})
        row = dict(epoch=epoch, phase="train", **members.losses(model),
                   retain_loss=tot["retain"] / len(batches), attacker_loss=tot["attacker"] / len(batches),
                   **{k: float(np.mean([s[k] for s in sh])) for k in sh[0]})
        if use_shadow or (p["shadow_every"] and epoch % p["shadow_every"] == 0):
            row["shadow_auc"] = members.shadow(model, p["shadow"], ctx.seed + epoch)
        history.append(row["shadow_auc"] if use_shadow else row["loss_gap"])
        signal = float(np.mean(history[-window:]))
        dist = abs(signal - es["target"])
        if epoch < window:  # only full windows: a partial one mixes in the first, unsettled epochs
            dist = np.inf
        elif dist < best_dist:
            best_dist, best_state, best_epoch, bad = dist, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
        ctx.trajectory.log(**row, signal=signal, best=(best_epoch == epoch))
        if epoch >= es["min_epochs"] and (dist <= es["tolerance"] or bad >= es["patience"]):
            break
    model.load_state_dict(best_state)
    model.eval()
    ctx.trajectory.log(epoch=best_epoch, phase="final", **members.losses(model))
    return model
