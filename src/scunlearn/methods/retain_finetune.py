"""The control every method is compared against: fine-tuning on the retain cells only.

Same recipe (:func:`~scunlearn.methods.common.finetune`: Adam, per-cell negative ELBO,
seeded batches, validation early stopping) and, with the same ``epochs``/``lr``/
``batch_size``/``patience`` and seed, bit-for-bit the same result as the fine-tuning
phase inside ``fisher`` started from the same weights. A method that does no better than
this does nothing beyond "a few more epochs on the retain cells". Adam makes the update
independent of the loss's overall scale, so the per-cell vs per-gene choice does not
matter here (there is only one term).

Trajectory: epoch 0 = the baseline, then one row per epoch, then ``phase == "final"``:
the returned (best-validation) model. ``forget_loss`` / ``val_loss`` / ``loss_gap`` are
per-gene losses of forget cells and their matched validation cells (z = μ, eval mode).
"""

from __future__ import annotations

from scunlearn.methods.common import MembershipSet, finetune, finetune_members
from scunlearn.methods.context import UnlearnContext
from scunlearn.vae.model import VAE


def log_finetune_epoch(ctx: UnlearnContext, members: MembershipSet, model: VAE, step: int = 0):
    """The ``on_epoch`` callback shared with fisher: retain loss per gene, val ELBO, movement columns."""
    n_genes = ctx.retain.shape[1]

    def on_epoch(epoch: int, train_loss: float, val_elbo: float) -> None:
        ctx.trajectory.log(epoch=epoch, step=step, phase="finetune", **members.losses(model),
                           retain_loss=train_loss / n_genes, val_elbo=val_elbo)

    return on_epoch


def retain_finetune(ctx: UnlearnContext) -> VAE:
    """Fine-tune on retain cells only, with validation early stopping (the control)."""
    p, model = ctx.params, ctx.model
    members = MembershipSet.build(model, ctx, p["match_k"])
    ctx.trajectory.log(epoch=0, step=0, phase="baseline", **members.losses(model))
    finetune(model, ctx, epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], patience=p["patience"],
             on_epoch=log_finetune_epoch(ctx, members, model))
    ctx.trajectory.log(epoch=len(ctx.trajectory.rows) - 1, step=0, phase="final", **members.losses(model))
    return model


def retain_finetune_members(ctxs: list[UnlearnContext]) -> list[VAE]:
    """:func:`retain_finetune` of an unlearning job's K members at once (:func:`finetune_members`): each
    member's model and trajectory are its solo run's up to float rounding."""
    p = ctxs[0].params
    sets = [MembershipSet.build(c.model, c, p["match_k"]) for c in ctxs]
    for c, members in zip(ctxs, sets):
        c.trajectory.log(epoch=0, step=0, phase="baseline", **members.losses(c.model))
    finetune_members(ctxs, epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], patience=p["patience"],
                     on_epochs=[log_finetune_epoch(c, m, c.model) for c, m in zip(ctxs, sets)])
    for c, members in zip(ctxs, sets):
        c.trajectory.log(epoch=len(c.trajectory.rows) - 1, step=0, phase="final", **members.losses(c.model))
    return [c.model for c in ctxs]
