"""SCRUB (Kurmanji, Triantafillou, Hayes & Triantafillou, "Towards Unbounded Machine
Unlearning", NeurIPS 2023): a student (the model) moves away from a frozen teacher (a copy
of the baseline) on the forget cells while staying close to it, and fitting the data, on
the retain cells.

The source's divergence is the KL between the teacher's and the student's softmax outputs.
A VAE's output for a cell is its posterior q(z | x), so the divergence here is the
closed-form KL(q_teacher(z | x) ‖ q_student(z | x)) of the two diagonal Gaussians (per cell,
summed over latent dimensions), plus, with weight ``decoder_weight``, the KL between the two
decoders' gene-composition softmax (each model at its own posterior mean): the closest thing
the VAE has to a classifier's softmax over classes. Each epoch ("SGDA" in the source):

* max-steps (the first ``msteps`` epochs only, first): over forget batches, minimise
  −KL_forget, i.e. push the student's posterior away from the teacher's;
* min-steps: over retain batches, minimise α · KL_retain + γ · L_retain, L_retain the per-gene
  negative ELBO (≈ 0.9 nats; the classifier's cross-entropy) of the batch.

**Scale.** The KLs are per cell (a divergence between two distributions of one cell, as the
source's KL is per example); L_retain is per gene (see :mod:`.common`). The source's
defaults α = 0.001, γ = 0.99 then keep their meaning: the min-step is almost all retain fit.
One Adam optimiser at ``lr`` for both steps (the source used SGD with momentum); the
student trains in train mode (dropout on, sampled z in L_retain), the teacher is in eval
mode and never changes. No rewinding (the source's SCRUB+R) and no early stopping: the
model after ``epochs`` epochs is returned.

Trajectory: epoch 0 = the baseline; one ``phase == "train"`` row per epoch with
``forget_kl`` / ``retain_kl`` (deterministic teacher–student divergence, eval mode, mean over
forget cells / up to 500 retain cells), the mean min- and max-step losses, whether the epoch
had max-steps, and the movement columns; ``phase == "final"`` = the returned model.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from scunlearn.methods.common import MembershipSet, _rng_devices, per_gene_loss, retain_batches
from scunlearn.methods.context import UnlearnContext
from scunlearn.vae.model import VAE
from scunlearn.vae.train import adam


def gaussian_kl(mu_t: torch.Tensor, logvar_t: torch.Tensor, mu_s: torch.Tensor,
                logvar_s: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_t, σ_t²) ‖ N(μ_s, σ_s²)) per row, diagonal Gaussians, summed over the last dimension."""
    return 0.5 * (logvar_s - logvar_t + (logvar_t.exp() + (mu_t - mu_s).pow(2)) / logvar_s.exp() - 1.0).sum(-1)


def divergence(teacher: VAE, student: VAE, x: torch.Tensor, decoder_weight: float = 0.0) -> torch.Tensor:
    """Per-cell teacher–student divergence: posterior KL (+ ``decoder_weight`` × gene-composition KL).

    The teacher is evaluated without gradients in whatever mode it is in (eval); the
    student in its own mode, with gradients.
    """
    with torch.no_grad():
        mu_t, lv_t = teacher.encode(x)
    mu_s, lv_s = student.encode(x)
    d = gaussian_kl(mu_t, lv_t, mu_s, lv_s)
    if decoder_weight > 0:
        with torch.no_grad():
            log_p_t = torch.log_softmax(teacher.px(teacher.decoder(mu_t)), dim=-1)
        log_p_s = torch.log_softmax(student.px(student.decoder(mu_s)), dim=-1)
        d = d + decoder_weight * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return d


def min_loss(teacher: VAE, student: VAE, x: torch.Tensor, alpha: float, gamma: float,
             decoder_weight: float = 0.0) -> tuple[torch.Tensor, float, float]:
    """α · mean KL(teacher ‖ student) + γ · per-gene retain loss; returns (loss, KL, retain loss) values.

    With α = 0 the divergence is not evaluated (no forward pass, no random draws): the loss
    is exactly γ · :func:`~scunlearn.methods.common.per_gene_loss`.
    """
    kl = divergence(teacher, student, x, decoder_weight).mean() if alpha > 0 else None
    retain = per_gene_loss(student, x)
    loss = gamma * retain
    if kl is not None:
        loss = alpha * kl + loss
    return loss, float("nan") if kl is None else float(kl.detach()), float(retain.detach())


def max_loss(teacher: VAE, student: VAE, x: torch.Tensor, decoder_weight: float = 0.0) -> torch.Tensor:
    """−mean KL(teacher ‖ student) on forget cells: minimising it raises the divergence."""
    return -divergence(teacher, student, x, decoder_weight).mean()


@torch.no_grad()
def mean_divergence(teacher: VAE, student: VAE, x: torch.Tensor, decoder_weight: float = 0.0) -> float:
    """Deterministic (both in eval mode) mean per-cell divergence; the student's mode is restored."""
    was = student.training
    student.eval()
    d = float(divergence(teacher, student, x, decoder_weight).mean())
    student.train(was)
    return d


def scrub(ctx: UnlearnContext) -> VAE:
    """Teacher–student SCRUB: max-steps on forget cells for ``msteps`` epochs, min-steps on retain cells every epoch."""
    p, model = ctx.params, ctx.model
    members = MembershipSet.build(model, ctx, p["match_k"])
    ctx.trajectory.log(epoch=0, phase="baseline", **members.losses(model), forget_kl=0.0, retain_kl=0.0)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    alpha, gamma, dw = p["alpha"], p["gamma"], p["decoder_weight"]
    retain_probe = ctx.retain[:500]
    with torch.random.fork_rng(devices=_rng_devices(ctx.device)):
        torch.manual_seed(ctx.seed)
        gen = torch.Generator().manual_seed(ctx.seed)
        fgen = torch.Generator().manual_seed(ctx.seed + 1)  # forget batches: not the retain stream
        opt = adam(model.parameters(), p["lr"])
        ctx.trajectory.expect("train", p["epochs"])
        for epoch in range(1, p["epochs"] + 1):
            model.train()
            maxes, mins, kls, fits = [], [], [], []
            if epoch <= p["msteps"]:
                perm = torch.randperm(len(ctx.forget), generator=fgen).to(ctx.device)
                for s in range(0, len(perm), p["forget_batch_size"]):
                    loss = max_loss(teacher, model, ctx.forget[perm[s:s + p["forget_batch_size"]]], dw)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    maxes.append(float(loss.detach()))
            for b in retain_batches(len(ctx.retain), p["batch_size"], gen, ctx.device):
                loss, kl, fit = min_loss(teacher, model, ctx.retain[b], alpha, gamma, dw)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                mins.append(float(loss.detach()))
                kls.append(kl)
                fits.append(fit)
            if not all(np.isfinite(v) for v in maxes + mins):
                raise ValueError(f"scrub diverged at epoch {epoch}; lower lr or msteps")
            ctx.trajectory.log(epoch=epoch, phase="train", max_step=bool(maxes), **members.losses(model),
                               forget_kl=mean_divergence(teacher, model, ctx.forget, dw),
                               retain_kl=mean_divergence(teacher, model, retain_probe, dw),
                               max_loss=float(np.mean(maxes)) if maxes else float("nan"),
                               min_loss=float(np.mean(mins)), min_kl=float(np.mean(kls)),
                               retain_loss=float(np.mean(fits)))
    model.eval()
    ctx.trajectory.log(epoch=p["epochs"], phase="final", **members.losses(model),
                       forget_kl=mean_divergence(teacher, model, ctx.forget, dw),
                       retain_kl=mean_divergence(teacher, model, retain_probe, dw))
    return model
