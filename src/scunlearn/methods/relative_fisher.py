"""Relative Fisher scrubbing: Fisher scrubbing that spares parameters the retain set needs more than the forget set.

Future work 1 of "Machine Unlearning for Single-Cell VAEs: Fishing for Privacy" ("weight
parameter importance by the ratio of forget-set to retain-set influence, preserving
parameters that matter more for retained cells"), on the Fisher forgetting line of
Golatkar, Achille & Soatto (CVPR 2020). The paper's explanation of why plain Fisher
scrubbing fails on structured forget sets is that the decoder's parameters are shared:
ascending the forget loss also moves parameters every retained cell depends on.

Update, for ``steps`` steps (same stopping rules as :func:`.fisher.scrub`), then the
same fine-tuning on retain as ``fisher``::

    θ ← θ + α · w ⊙ (F̃_R + λ)⁻¹ ⊙ ∇θ L_F(θ)

with F_R, F_F the diagonal empirical Fishers of the per-gene loss (mean over cells of
the squared per-cell gradient) on ``fisher_cells`` retain cells and on the forget cells
(at most ``fisher_cells``), F̃_R = F_R / mean(F_R) and λ the relative damping of
``fisher``, and per parameter the weight ``w`` (``weighting``):

* ``share`` (default): w = F_F / (F_F + F_R), the forget set's share of the parameter's
  Fisher. Both Fishers are *per-cell means*, so w compares an average forget cell with
  an average retain cell, whatever the sets' sizes. Chosen because it is bounded in
  [0, 1] (never steps further than ``fisher``), smooth (no threshold to tune), ½ where
  the two sets use a parameter equally, → 0 where the retain set dominates (spared) and
  → 1 where the forget set dominates (moved exactly as by ``fisher``).
* ``clipped_ratio``: w = min(1, F_F / F_R): every parameter the forget set uses at least
  as much as the retain set gets the full ``fisher`` step (share gives ½ at F_F = F_R);
  below that w is the ratio itself, so it spares retain-dominated parameters as ``share`` does.

A parameter neither set uses (F_F = F_R = 0) has no forget gradient either; its w is 0.
With w ≤ 1 the step is never larger than ``fisher``'s, so a useful α is larger than
``fisher``'s (default 3e-3; config/demo.yaml has the measurements).

Trajectory: as ``fisher`` (epoch 0 baseline, ``scrub`` rows with ``scrub_change`` on the
last, ``finetune`` rows, ``final``).
"""

from __future__ import annotations

import logging

import torch

from scunlearn.methods.context import UnlearnContext
from scunlearn.methods.fisher import _start, cell_loss_fisher, scrub_and_finish
from scunlearn.vae.model import VAE

log = logging.getLogger(__name__)

WEIGHTINGS = ("share", "clipped_ratio")


def relative_weights(F_forget: dict[str, torch.Tensor], F_retain: dict[str, torch.Tensor],
                     weighting: str = "share") -> dict[str, torch.Tensor]:
    """Per-parameter weights in [0, 1] from the forget and retain diagonal Fishers (see the module docstring)."""
    out = {}
    for k, ff in F_forget.items():
        fr = F_retain[k]
        if weighting == "share":
            den = ff + fr
            w = torch.where(den > 0, ff / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
        elif weighting == "clipped_ratio":
            ratio = ff / torch.where(fr > 0, fr, torch.ones_like(fr))
            w = torch.where(fr > 0, ratio.clamp(max=1.0), (ff > 0).to(ff.dtype))
        else:
            raise ValueError(f"relative_fisher: unknown weighting '{weighting}'; one of {WEIGHTINGS}")
        out[k] = w
    return out


def forget_fisher(model: VAE, ctx: UnlearnContext, p: dict) -> dict[str, torch.Tensor]:
    """The diagonal Fisher on the forget cells (at most ``fisher_cells``, drawn with the method's seed)."""
    gen = torch.Generator().manual_seed(ctx.seed + 1)
    sub = torch.randperm(len(ctx.forget), generator=gen)[: p["fisher_cells"]].to(ctx.device)
    return cell_loss_fisher(model, ctx.forget[sub], p["chunk_size"])


def relative_fisher(ctx: UnlearnContext) -> VAE:
    """Scrub with w ⊙ (F̃_R + damping)⁻¹, w = the forget set's relative Fisher, then fine-tune on retain."""
    p = ctx.params
    model, members, before, F_retain, P = _start(ctx)  # the same cells, Fisher and preconditioner as fisher's
    W = relative_weights(forget_fisher(model, ctx, p), F_retain, p["weighting"])
    flat = torch.cat([v.flatten() for v in W.values()])
    log.info("%s: %s weights: mean %.3g, median %.3g, %.1f%% below 0.1, %.1f%% above 0.9", ctx.trajectory.name,
             p["weighting"], float(flat.mean()), float(flat.median()), 100 * float((flat < 0.1).double().mean()),
             100 * float((flat > 0.9).double().mean()))
    return scrub_and_finish(ctx, model, members, before, {k: P[k] * W[k] for k in P})
