"""NegGrad+ (Kurmanji, Triantafillou, Hayes & Triantafillou, "Towards Unbounded Machine
Unlearning", NeurIPS 2023): descend the retain loss and ascend the forget loss at once,

    loss = β · L_retain − (1 − β) · L_forget,

one retain batch and one forget batch per step. The source's losses are the classifier's
cross-entropy; here they are the VAE's per-gene negative ELBO (sampled z, dropout on) of a
retain batch and of a forget batch. Everything else is the control's recipe
(:func:`~scunlearn.methods.common.finetune`: Adam, the same seeded retain batches, z and
dropout draws, validation early stopping), with the mix passed as its ``extra_loss`` hook,
so with β = 1 NegGrad+ *is* ``retain_finetune``, bit for bit, for the same seed and budget.

**Scale.** Both terms are per-cell losses over the same genes, so the mix is written as
β · L_retain,cell − (1 − β) · L_forget,cell = n_genes × the per-gene mix: Adam does not see
the common factor, and at β = 1 the loss is the control's, unchanged.

**Randomness.** Forget batches are drawn from their own generator (seed + 1), and the z /
dropout draws of the forget term run in a forked RNG seeded from that generator: the
retain stream is the control's whatever β, and with no ascent nothing extra is drawn.

**Guard.** The NB negative log-likelihood is unbounded above, and ascent on it runs away
(as ``fisher``'s scrub does): before each step the mean per-gene forget loss (eval mode,
z = μ) is compared with its value at the start; once it is more than ``max_rise``
(relative) above, the ascent term is dropped for the rest of the run and the method
continues as β · L_retain (the trajectory's ``ascent`` column turns False).

Trajectory: epoch 0 = the baseline; one ``phase == "finetune"`` row per epoch with the
retain loss, the mean forget-batch loss (per gene), whether the ascent is still on, and
the movement columns; ``phase == "final"`` = the returned (best-validation) model.
"""

from __future__ import annotations

import logging

import torch

from scunlearn.methods.common import MembershipSet, _rng_devices, finetune, per_gene_cell_loss
from scunlearn.methods.context import UnlearnContext
from scunlearn.vae.model import VAE

log = logging.getLogger(__name__)


class _NegGradMix:
    """The ``extra_loss`` hook: β · retain loss − (1 − β) · a forget batch's loss, with the guard."""

    def __init__(self, model: VAE, ctx: UnlearnContext, beta: float, batch_size: int, max_rise: float):
        self.model, self.forget, self.beta, self.max_rise = model, ctx.forget, beta, max_rise
        self.batch = min(batch_size, len(ctx.forget))
        self.gen = torch.Generator().manual_seed(ctx.seed + 1)  # forget batches: not the retain stream
        self.devices = _rng_devices(ctx.device)
        self.order: list[torch.Tensor] = []
        self.ascent = beta < 1.0
        self.start = self._forget_loss() if self.ascent else float("nan")
        self.forget_losses: list[float] = []  # forget-batch losses (per gene) of the current epoch

    @torch.no_grad()
    def _forget_loss(self) -> float:
        """Mean per-gene forget loss, deterministic (eval mode, z = μ); restores the training mode."""
        was = self.model.training
        value = float(per_gene_cell_loss(self.model, self.forget).mean())
        self.model.train(was)
        return value

    def _next_batch(self) -> torch.Tensor:
        """The next forget batch: shuffled passes over the forget cells, cycled (``itertools.cycle``-like)."""
        if not self.order:
            perm = torch.randperm(len(self.forget), generator=self.gen).to(self.forget.device)
            self.order = [perm[s:s + self.batch] for s in range(0, len(perm), self.batch)]
        return self.forget[self.order.pop(0)]

    def __call__(self, retain_loss: torch.Tensor) -> torch.Tensor:
        if not self.ascent:
            return retain_loss if self.beta == 1.0 else self.beta * retain_loss
        now = self._forget_loss()
        if now > self.start * (1 + self.max_rise):
            log.info("neggrad_plus: forget loss %.4g rose more than max_rise %g above %.4g; ascent stopped",
                     now, self.max_rise, self.start)
            self.ascent = False
            return self.beta * retain_loss
        xf = self._next_batch()
        seed = int(torch.randint(2**62, (1,), generator=self.gen))
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            forget_loss = self.model.loss(xf, 1.0)  # per cell, like retain_loss: sampled z, dropout on
        if not torch.isfinite(forget_loss):
            raise ValueError("neggrad_plus: the forget loss is not finite; lower lr or max_rise")
        self.forget_losses.append(float(forget_loss.detach()) / xf.shape[-1])
        return self.beta * retain_loss - (1.0 - self.beta) * forget_loss


def neggrad_plus(ctx: UnlearnContext) -> VAE:
    """Fine-tune on β · retain loss − (1 − β) · forget loss (Kurmanji et al. 2023's NegGrad+), guarded."""
    p, model = ctx.params, ctx.model
    members = MembershipSet.build(model, ctx, p["match_k"])
    ctx.trajectory.log(epoch=0, step=0, phase="baseline", **members.losses(model))
    mix = _NegGradMix(model, ctx, p["beta"], p["batch_size"], p["max_rise"])
    n_genes = ctx.retain.shape[1]

    def on_epoch(epoch: int, train_loss: float, val_elbo: float) -> None:
        fl = mix.forget_losses
        ctx.trajectory.log(epoch=epoch, step=0, phase="finetune", **members.losses(model),
                           retain_loss=train_loss / n_genes, val_elbo=val_elbo,
                           forget_batch_loss=sum(fl) / len(fl) if fl else float("nan"), ascent=mix.ascent)
        fl.clear()

    finetune(model, ctx, epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], patience=p["patience"],
             on_epoch=on_epoch, extra_loss=mix)
    ctx.report["neggrad_ascent_stopped"] = bool(p["beta"] < 1.0 and not mix.ascent)
    ctx.trajectory.log(epoch=len(ctx.trajectory.rows) - 1, step=0, phase="final", **members.losses(model))
    return model
