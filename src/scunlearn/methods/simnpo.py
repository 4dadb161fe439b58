"""SimNPO (Fan, Liu, Lin, Jia, Zhang, Mei & Liu, "Simplicity Prevails: Rethinking Negative
Preference Optimization for LLM Unlearning", 2024) and NPO (Zhang, Lin, Bai & Mei, "Negative
Preference Optimization: From Catastrophic Collapse to Effective Unlearning", 2024): a bounded
forget loss whose gradient fades as the forget cells' likelihood falls, plus the retain loss.

**From the paper to the VAE.** SimNPO's forget loss for a sample (x, y) is

    L = −(2/β) · log σ( −(β/|y|) · log π_θ(y|x) − γ ),

with |y| the response length (the length normalisation that replaces NPO's reference model)
and γ ≥ 0 a reward margin. For a cell, y is its count vector over the genes, |y| = n_genes,
and log π_θ(y) is its log-likelihood, bounded below by the ELBO: log π_θ = −ℓ(x) with ℓ the
cell's negative ELBO summed over genes (a loss, which forgetting must *raise*). Then

    −(β/|y|) · log π_θ = β · ℓ(x) / n_genes = β · ℓ_g(x),   ℓ_g = the per-gene negative ELBO,

    L_SimNPO(x) = −(2/β) · log σ( β · ℓ_g(x) − γ ).

Minimising it raises ℓ_g, and dL/dℓ_g = −2 · σ(γ − β · ℓ_g): its magnitude is below 2 and
falls to 0 as ℓ_g → ∞ (unlike gradient ascent, whose gradient is −1 whatever the loss has
become; NPO's and SimNPO's weight is what keeps them from collapsing). With ``reference:
baseline`` it is NPO, log π_ref − log π_θ = ℓ_θ − ℓ_ref (per gene, ℓ_ref = the frozen
baseline's):

    L_NPO(x) = −(2/β) · log σ( β · (ℓ_g,θ(x) − ℓ_g,ref(x)) − γ ),

which is (2/β) log 2 at the start (ℓ_θ = ℓ_ref) whatever the cell; the paper's NPO has γ = 0
(the default). NPO uses the sequence's summed log-likelihood; it is per gene here as every
loss in this code base (module :mod:`.common`), so β means the same for both references.

**ℓ_g here** is the cell's negative ELBO / n_genes in eval mode with z = μ (no dropout, no
sampled z: :func:`~scunlearn.methods.common.cell_loss_grad`), the deterministic per-cell value
the trajectory's ``forget_loss`` column means: the log-likelihood of the response in the
paper is a deterministic function of θ, and with it ℓ_θ − ℓ_ref is exactly 0 at the start
rather than sampling noise. ℓ_ref is computed once, on the baseline, before any step.

**Objective and recipe.** loss = mean over a forget batch of L + λ · retain loss (``λ`` =
``retain_weight``, the paper's retain regulariser is the NLL of retain data), passed to the
control's :func:`~scunlearn.methods.common.finetune` as its ``extra_loss`` hook: Adam at
``lr``, the control's seeded retain batches, z and dropout draws, validation early stopping,
best epoch restored. Both terms are written per cell (the SimNPO term times n_genes) like
NegGrad+'s mix; Adam does not see the common factor. **No guard** is needed: the forget
gradient saturates by construction. **Randomness:** forget batches come from the method's own
generator (seed + 1); the forget term draws nothing, so the retain stream is the control's.

Trajectory: epoch 0 = the baseline; one ``phase == "finetune"`` row per epoch with the
retain loss, ``npo_loss`` (mean SimNPO / NPO loss of the forget batches) and ``npo_weight``
(mean |dL/dℓ_g| / 2 over them: 1 = gradient ascent's full weight, 0 = saturated) and the
movement columns; ``phase == "final"`` = the returned (best-validation) model.
"""

from __future__ import annotations

import torch
from torch.nn.functional import logsigmoid

from scunlearn.methods.common import ForgetStream, MembershipSet, cell_loss_grad, finetune, per_gene_cell_loss
from scunlearn.methods.context import UnlearnContext
from scunlearn.vae.model import VAE


def simnpo_loss(ell: torch.Tensor, beta: float, gamma: float = 0.0, reference: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Per-cell −(2/β) · log σ(β · (ℓ − ℓ_ref) − γ) for per-gene losses ℓ (ℓ_ref = 0 without a reference)."""
    u = beta * (ell if reference is None else ell - reference) - gamma
    return -(2.0 / beta) * logsigmoid(u)


class _NPOMix:
    """The ``extra_loss`` hook: mean SimNPO/NPO loss of a forget batch (× n_genes) + λ · retain loss."""

    def __init__(self, model: VAE, ctx: UnlearnContext, p: dict):
        self.model, self.forget = model, ctx.forget
        self.beta, self.gamma, self.weight = p["beta"], p["gamma"], p["retain_weight"]
        self.stream = ForgetStream(len(ctx.forget), p["batch_size"], ctx.seed, ctx.device)
        self.reference = per_gene_cell_loss(model, ctx.forget) if p["reference"] == "baseline" else None
        self.losses: list[float] = []
        self.weights: list[float] = []

    def __call__(self, retain_loss: torch.Tensor) -> torch.Tensor:
        idx = self.stream.next()
        ell = cell_loss_grad(self.model, self.forget[idx])
        ref = None if self.reference is None else self.reference[idx]
        npo = simnpo_loss(ell, self.beta, self.gamma, ref).mean()
        if not torch.isfinite(npo):
            raise ValueError("simnpo: the forget loss is not finite; lower lr")
        with torch.no_grad():  # |dL/dℓ| / 2 = σ(γ − β (ℓ − ℓ_ref))
            u = self.beta * (ell if ref is None else ell - ref) - self.gamma
            self.weights.append(float(torch.sigmoid(-u).mean()))
        self.losses.append(float(npo.detach()))
        return self.forget.shape[-1] * npo + self.weight * retain_loss


def simnpo(ctx: UnlearnContext) -> VAE:
    """Fine-tune on the SimNPO (or, with a baseline reference, NPO) forget loss + λ · retain loss."""
    p, model = ctx.params, ctx.model
    members = MembershipSet.build(model, ctx, p["match_k"])
    ctx.trajectory.log(epoch=0, step=0, phase="baseline", **members.losses(model))
    mix = _NPOMix(model, ctx, p)
    n_genes = ctx.retain.shape[1]

    def on_epoch(epoch: int, train_loss: float, val_elbo: float) -> None:
        nl, nw = mix.losses, mix.weights
        ctx.trajectory.log(epoch=epoch, step=0, phase="finetune", **members.losses(model),
                           retain_loss=train_loss / n_genes, val_elbo=val_elbo,
                           npo_loss=sum(nl) / len(nl) if nl else float("nan"),
                           npo_weight=sum(nw) / len(nw) if nw else float("nan"))
        nl.clear()
        nw.clear()

    finetune(model, ctx, epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], patience=p["patience"],
             on_epoch=on_epoch, extra_loss=mix)
    ctx.trajectory.log(epoch=len(ctx.trajectory.rows) - 1, step=0, phase="final", **members.losses(model))
    return model
