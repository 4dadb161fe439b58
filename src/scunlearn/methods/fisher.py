"""Fisher scrubbing (paper §IV-D) and Fisher forgetting by noise (Golatkar et al. 2020), then fine-tuning.

``fisher``: θ ← θ + α (F̃ + λ)⁻¹ ∇θ L_F(θ) for ``steps`` steps (stopping early once L_F
is ``max_rise`` above its start: ascent on an unbounded loss runs away), then fine-tuning on retain.
``fisher_noise``: θ ← θ + √(α (F̃ + λ)⁻¹) ⊙ ε, ε ~ N(0, I) (Golatkar, Achille & Soatto,
"Eternal Sunshine of the Spotless Net", CVPR 2020: noise of covariance ∝ F⁻¹ destroys
what the retain set does not pin down), then the same fine-tuning.

F is the diagonal empirical Fisher of the retain set (mean of per-cell squared gradients
of the per-cell loss, :func:`cell_loss_fisher`); L_F is the mean forget-set loss.

**Scale.** The per-cell loss is the negative ELBO divided by the number of genes (see
:mod:`.common`): the per-element scale of the reference code. **Damping rule:** the
diagonal Fisher of this loss is tiny and spans many decades (demo: max ≈ 3e-5, median
≈ 3e-10), so an absolute damping (0.1) swamps it and the preconditioner becomes the
constant 1/λ: plain gradient ascent. We divide F by its mean over all parameters,
F̃ = F / mean(F), so ``damping`` λ is *relative to the Fisher's own scale*: a parameter
with the average Fisher gets 1/(1 + λ), one the retain set does not constrain gets up
to 1/λ. α is then a step size in units of that normalised metric.

Trajectory: epoch 0 = the baseline; ``phase == "scrub"`` rows every ``log_every`` steps
(and the last step) with the forget loss; ``phase == "finetune"`` rows (epochs 1…);
``phase == "final"`` = the returned model. ``scrub_change`` on the last scrub row is the
relative change of the mean forget loss made by scrubbing alone.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch.func import functional_call, grad, vmap
from torch.nn.functional import layer_norm

from scunlearn.methods.common import MembershipSet, finetune
from scunlearn.methods.context import UnlearnContext
from scunlearn.methods.retain_finetune import log_finetune_epoch
from scunlearn.vae.model import VAE

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
    from scunlearn.methods.compute import CellMeter

    CellMeter.add(n)  # a per-sample gradient per cell: under vmap the meter's hook cannot count them
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    for s in range(0, n, chunk_size):
        g = per_sample(params, *(t[s:s + chunk_size] for t in inputs))
        for k in fisher:
            fisher[k] += g[k].pow(2).sum(0)
    return {k: v / n for k, v in fisher.items()}


def _cell_loss(call, x):
    """Negative ELBO of the cells divided by the number of genes (z = μ), summed over cells."""
    t = call(x)
    return ((t.nll + t.kl) / x.shape[-1]).sum()


def cell_loss_fisher(model: torch.nn.Module, cells: torch.Tensor, chunk_size: int = 256) -> dict[str, torch.Tensor]:
    """``diagonal_fisher(model, _cell_loss, (cells,))``, exactly, from one batched backward per chunk.

    The per-cell loss of one cell depends on no other cell (eval mode: no dropout, z = μ,
    LayerNorm per cell), so a layer's per-cell gradients follow from its input and output
    gradient rows: Σ_i (g_i a_iᵀ)² = (g²)ᵀ(a²) for a Linear weight, Σ_i (g_i ⊙ x̂_i)² for a
    LayerNorm's, Σ_i g_i² for biases; log θ is given one row per cell. No ``torch.func``:
    its first call imports ``torch._dynamo`` (~1.3 s of each Fisher-family job). A model
    with any other parameter (or a module used twice) goes through :func:`diagonal_fisher`.
    """
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm))]
    covered = {id(q) for m in layers for q in m.parameters(recurse=False)}
    names = {id(q): k for k, q in model.named_parameters()}
    if not isinstance(model, VAE) or set(names) - covered != {id(model.log_theta)}:
        return diagonal_fisher(model, _cell_loss, (cells,), chunk_size)
    fisher = {k: torch.zeros_like(q) for k, q in model.named_parameters()}
    seen: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []

    def keep(mod, inp, out):
        seen.append((mod, inp[0].detach(), out))

    hooks = [m.register_forward_hook(keep) for m in layers]
    try:
        for s in range(0, len(cells), chunk_size):
            x = cells[s:s + chunk_size]
            seen.clear()
            log_theta = model.log_theta.detach().expand(len(x), -1).clone().requires_grad_()
            loss = _cell_loss(lambda *a, lt=log_theta: functional_call(model, {"log_theta": lt}, a), x)
            if len({id(m) for m, _, _ in seen}) != len(seen):  # a layer applied twice: rows no longer separate
                return diagonal_fisher(model, _cell_loss, (cells,), chunk_size)
            grads = torch.autograd.grad(loss, [log_theta, *(out for _, _, out in seen)])
            fisher[names[id(model.log_theta)]] += grads[0].pow(2).sum(0)
            for (mod, a, _), g in zip(seen, grads[1:]):
                g2 = g.pow(2)
                if isinstance(mod, torch.nn.Linear):
                    fisher[names[id(mod.weight)]] += g2.t() @ a.pow(2)
                elif mod.weight is not None:
                    xhat = layer_norm(a, mod.normalized_shape, None, None, mod.eps)
                    fisher[names[id(mod.weight)]] += (g * xhat).pow(2).sum(0)
                if mod.bias is not None:
                    fisher[names[id(mod.bias)]] += g2.sum(0)
    finally:
        for h in hooks:
            h.remove()
    return {k: v / len(cells) for k, v in fisher.items()}


def preconditioner(F: dict[str, torch.Tensor], damping: float) -> dict[str, torch.Tensor]:
    """(F̃ + λ)⁻¹ with F̃ = F / mean(F) over every parameter entry (the damping rule above)."""
    total = sum(float(v.sum()) for v in F.values())
    count = sum(v.numel() for v in F.values())
    scale = total / count if total > 0 else 1.0
    return {k: 1.0 / (v / scale + damping) for k, v in F.items()}


def retain_fisher(model: VAE, ctx: UnlearnContext, p: dict) -> dict[str, torch.Tensor]:
    """The diagonal Fisher on ``fisher_cells`` retain cells drawn with the method's seed."""
    gen = torch.Generator().manual_seed(ctx.seed)
    sub = torch.randperm(len(ctx.retain), generator=gen)[: p["fisher_cells"]].to(ctx.device)
    return cell_loss_fisher(model, ctx.retain[sub], p["chunk_size"])


def scrub(model: VAE, forget: torch.Tensor, P: dict[str, torch.Tensor], alpha: float, steps: int,
          max_rise: float = float("inf"), on_step: Callable[[int, float], None] | None = None) -> int:
    """Up to ``steps`` preconditioned ascent steps on the mean per-gene forget loss (eval mode).

    Ascent on an unbounded loss accelerates once it starts to run away, so scrubbing stops
    as soon as the forget loss is more than ``max_rise`` (relative) above its starting
    value, and undoes the last step if the loss became non-finite. Returns the number of
    steps taken. ``on_step(step, loss_before_step)`` is called before each step.
    """
    model.eval()  # deterministic per-cell loss (no dropout, z = μ)
    params = dict(model.named_parameters())
    last, start = None, None
    for step in range(steps):
        loss = _cell_loss(model, forget) / len(forget)
        if not torch.isfinite(loss):
            if last is None:
                raise ValueError("fisher: the forget loss is not finite before scrubbing")
            with torch.no_grad():
                for (k, q), g in zip(params.items(), last):  # undo the step that broke it
                    q.sub_(alpha * P[k] * g)
            log.warning("fisher: forget loss non-finite at step %d; stopped scrubbing at step %d", step, step - 1)
            return step - 1
        start = float(loss.detach()) if start is None else start
        if float(loss.detach()) > start * (1 + max_rise):
            log.info("fisher: forget loss %.4g rose more than max_rise %g above %.4g; stopped at step %d",
                     float(loss.detach()), max_rise, start, step)
            return step
        if on_step is not None:
            on_step(step, float(loss.detach()))
        last = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            for (k, q), g in zip(params.items(), last):
                q.add_(alpha * P[k] * g)
    return steps


def _finish(ctx: UnlearnContext, model: VAE, members: MembershipSet, before: dict, step: int) -> VAE:
    p = ctx.params
    after = members.losses(model)
    change = (after["forget_loss"] - before["forget_loss"]) / abs(before["forget_loss"])
    ctx.trajectory.log(epoch=0, step=step, phase="scrub", **after, scrub_change=change)
    log.info("%s: forget loss %.6f → %.6f after scrubbing (%+.2f%%)", ctx.trajectory.name,
             before["forget_loss"], after["forget_loss"], 100 * change)
    if p["finetune_epochs"] > 0:
        finetune(model, ctx, epochs=p["finetune_epochs"], lr=p["finetune_lr"], batch_size=p["batch_size"],
                 patience=p["patience"], on_epoch=log_finetune_epoch(ctx, members, model, step))
    model.eval()
    last_epoch = int(ctx.trajectory.rows[-1]["epoch"])
    ctx.trajectory.log(epoch=last_epoch, step=step, phase="final", **members.losses(model))
    return model


def _start(ctx: UnlearnContext):
    model = ctx.model
    model.eval()
    members = MembershipSet.build(model, ctx, ctx.params["match_k"])
    before = members.losses(model)
    ctx.trajectory.log(epoch=0, step=0, phase="baseline", **before)
    F = retain_fisher(model, ctx, ctx.params)
    P = preconditioner(F, ctx.params["damping"])
    flat = torch.cat([v.flatten() for v in P.values()])
    log.info("%s: preconditioner (F/mean F + %g)^-1 spans %.4g … %.4g (median %.4g)", ctx.trajectory.name,
             ctx.params["damping"], float(flat.min()), float(flat.max()), float(flat.median()))
    return model, members, before, F, P


def scrub_and_finish(ctx: UnlearnContext, model: VAE, members: MembershipSet, before: dict,
                     P: dict[str, torch.Tensor]) -> VAE:
    """Scrub with step preconditioner ``P`` (logging every ``log_every`` steps), then :func:`_finish`."""
    p = ctx.params

    def on_step(step, loss):
        if step and step % p["log_every"] == 0:
            ctx.trajectory.log(epoch=0, step=step, phase="scrub", **members.losses(model))

    ctx.trajectory.expect("scrub", p["steps"], key="step", upper_bound=True)  # max_rise may stop it early
    kept = scrub(model, ctx.forget, P, p["alpha"], p["steps"], p["max_rise"], on_step)
    return _finish(ctx, model, members, before, kept)


def fisher(ctx: UnlearnContext) -> VAE:
    """Scrub with the inverse damped, unit-mean diagonal Fisher of the retain set, then fine-tune on retain."""
    model, members, before, _, P = _start(ctx)
    return scrub_and_finish(ctx, model, members, before, P)


def fisher_noise(ctx: UnlearnContext) -> VAE:
    """Add Gaussian noise of variance alpha · (F̃ + damping)⁻¹ per parameter (Golatkar et al. 2020), then fine-tune."""
    p = ctx.params
    model, members, before, _, P = _start(ctx)
    gen = torch.Generator().manual_seed(ctx.seed)
    with torch.no_grad():
        for k, q in model.named_parameters():
            eps = torch.randn(q.shape, generator=gen).to(q.device)
            q.add_(torch.sqrt(p["alpha"] * P[k]) * eps)
    return _finish(ctx, model, members, before, 1)
