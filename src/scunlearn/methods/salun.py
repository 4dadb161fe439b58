"""SalUn (Fan, Liu, Zhang, Wong, Wei & Liu, "SalUn: Empowering Machine Unlearning via
Gradient-based Weight Saliency", ICLR 2024): fine-tune only the weights that matter most to
the forget data, with a bounded forgetting objective.

**Saliency mask.** m = 1 on the top ``mask_fraction`` (default 0.5, the paper's) of all
parameter entries, taken together over every tensor, by |∇θ L_forget(θ₀)|, 0 elsewhere;
L_forget is the mean over the forget cells of the per-gene negative ELBO, computed once on the
baseline θ₀ in **eval mode with z = μ** (no dropout, no sampled z: the mask is a deterministic
function of the baseline and the forget cells, with no random draw). Exactly k = round(f · N)
of the N entries are kept; ties in |g| are broken by the entries' order (``named_parameters``
order, then row-major), lower first (a stable sort). The update is m ⊙ Δθ: every gradient is
multiplied by m before Adam sees it (a hook on each parameter), so a masked-out entry has zero
gradient at every step, Adam's moments stay 0 and the entry stays bit-identical to the
baseline (tested).

**Objective.** The paper's generative variant associates the forget data with a *misaligned*
condition (class c ↦ a random c' ≠ c: "random labelling") and keeps a β-weighted retain loss,
L = L_RL(D_f) + β · L(D_r). An unconditional VAE has no label; the "condition" of a cell is its
own input. The analogue used here is **random relabelling of the reconstruction target**: each
forget cell is paired, at every step, with a retain cell drawn at random, and the model is
trained on the negative ELBO of that retain cell's counts under the forget cell's posterior
(the encoder reads the forget cell, the NB mean is the decoder's softmax times the retain
cell's library size: :func:`~scunlearn.methods.common.pair_loss`). The forget cells are thus
taught to decode as random other cells, as the paper's forget images are taught to follow a
random other class. Both terms are per-cell negative ELBOs over the same genes, so the mix is
n_genes × the per-gene mix (Adam does not see the factor).

**Why no guard.** Unlike NegGrad+'s ascent, relabelling is a *descent* on the NLL of real count
vectors: bounded below, it cannot run away, and the forget cells' own loss can rise only as far
as explaining them as random retain cells costs. Validation early stopping (the control's) is
the only stop; ``beta`` (default 1) weighs the retain term.

**Recipe and randomness.** Everything else is the control's
(:func:`~scunlearn.methods.common.finetune`: Adam at ``lr``, the same seeded retain batches, z
and dropout draws, validation early stopping, best epoch restored), with the mix passed as its
``extra_loss`` hook. Forget batches, the relabelling partners and the forget term's z / dropout
draws come from the method's own generator (seed + 1) and a forked RNG: the retain stream is
the control's. Same seed ⇒ same model.

Trajectory: epoch 0 = the baseline (with the mask's kept fraction); one ``phase == "finetune"``
row per epoch with the retain loss, ``relabel_loss`` (the mean relabelled forget-batch loss per
gene) and the movement columns; ``phase == "final"`` = the returned (best-validation) model.
"""

from __future__ import annotations

import logging
import math

import torch

from scunlearn.methods.common import ForgetStream, MembershipSet, _rng_devices, finetune, pair_loss
from scunlearn.methods.context import UnlearnContext
from scunlearn.vae.model import VAE

log = logging.getLogger(__name__)


def forget_gradient(model: VAE, forget: torch.Tensor, chunk_size: int = 1024) -> dict[str, torch.Tensor]:
    """∇θ of the mean per-gene negative ELBO of the forget cells, eval mode, z = μ (deterministic)."""
    was = model.training
    model.eval()
    params = dict(model.named_parameters())
    total = {k: torch.zeros_like(q) for k, q in params.items()}
    try:
        for s in range(0, len(forget), chunk_size):
            x = forget[s:s + chunk_size]
            t = model.terms(x, sample=False, fused=True)
            loss = ((t.nll + t.kl) / x.shape[-1]).sum() / len(forget)
            for (k, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()))):
                total[k] += g
    finally:
        model.train(was)
    return total


def top_fraction_mask(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Boolean masks keeping exactly the top round(fraction · N) entries of |scores| over all tensors.

    Ties are broken by position (the dict's order, then row-major): of equal scores, earlier first.
    """
    names = list(scores)
    flat = torch.cat([scores[k].detach().abs().flatten() for k in names])
    n = flat.numel()
    k = min(n, max(1, math.floor(fraction * n + 0.5)))
    order = torch.sort(flat, descending=True, stable=True).indices
    keep = torch.zeros(n, dtype=torch.bool, device=flat.device)
    keep[order[:k]] = True
    out, start = {}, 0
    for name in names:
        size = scores[name].numel()
        out[name] = keep[start:start + size].view(scores[name].shape)
        start += size
    return out


def saliency_mask(model: VAE, forget: torch.Tensor, fraction: float) -> dict[str, torch.Tensor]:
    """SalUn's weight saliency mask: the top ``fraction`` of entries by |∇θ L_forget| at the current θ."""
    return top_fraction_mask(forget_gradient(model, forget), fraction)


def mask_gradients(model: VAE, mask: dict[str, torch.Tensor]) -> list:
    """Zero every gradient outside ``mask`` as it reaches each parameter; returns the hooks' handles."""
    handles = []
    for k, q in model.named_parameters():
        m = mask[k]
        handles.append(q.register_hook(lambda g, m=m: torch.where(m, g, torch.zeros((), dtype=g.dtype,
                                                                                    device=g.device))))
    return handles


class _RelabelMix:
    """The ``extra_loss`` hook: relabelled forget-batch loss + β · retain loss (both per cell)."""

    def __init__(self, model: VAE, ctx: UnlearnContext, beta: float, batch_size: int):
        self.model, self.forget, self.retain, self.beta = model, ctx.forget, ctx.retain, beta
        self.stream = ForgetStream(len(ctx.forget), batch_size, ctx.seed, ctx.device)
        self.devices = _rng_devices(ctx.device)
        self.losses: list[float] = []  # relabelled forget-batch losses (per gene) of the current epoch

    def __call__(self, retain_loss: torch.Tensor) -> torch.Tensor:
        idx = self.stream.next()
        partners = torch.randint(len(self.retain), (len(idx),), generator=self.stream.gen).to(idx.device)
        seed = self.stream.seed()
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            relabel = pair_loss(self.model, self.forget[idx], self.retain[partners])
        if not torch.isfinite(relabel):
            raise ValueError("salun: the relabelled forget loss is not finite; lower lr")
        self.losses.append(float(relabel.detach()) / self.forget.shape[-1])
        return relabel + self.beta * retain_loss


def salun(ctx: UnlearnContext) -> VAE:
    """Fine-tune the forget-salient weights only on relabelled forget cells + β · retain loss (Fan et al. 2024)."""
    p, model = ctx.params, ctx.model
    members = MembershipSet.build(model, ctx, p["match_k"])
    mask = saliency_mask(model, ctx.forget, p["mask_fraction"])
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    log.info("%s: saliency mask keeps %d of %d parameter entries (%.4g%%)", ctx.trajectory.name, kept, total,
             100 * kept / total)
    ctx.report["salun_mask_fraction"] = kept / total
    ctx.trajectory.log(epoch=0, step=0, phase="baseline", **members.losses(model), mask_fraction=kept / total)
    mix = _RelabelMix(model, ctx, p["beta"], p["batch_size"])
    n_genes = ctx.retain.shape[1]

    def on_epoch(epoch: int, train_loss: float, val_elbo: float) -> None:
        rl = mix.losses
        ctx.trajectory.log(epoch=epoch, step=0, phase="finetune", **members.losses(model),
                           retain_loss=train_loss / n_genes, val_elbo=val_elbo,
                           relabel_loss=sum(rl) / len(rl) if rl else float("nan"))
        rl.clear()

    handles = mask_gradients(model, mask)
    try:
        finetune(model, ctx, epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], patience=p["patience"],
                 on_epoch=on_epoch, extra_loss=mix)
    finally:
        for h in handles:
            h.remove()
    ctx.trajectory.log(epoch=len(ctx.trajectory.rows) - 1, step=0, phase="final", **members.losses(model))
    return model
