"""Selective Amnesia (Heng & Soh, "Selective Amnesia: A Continual Learning Approach to
Forgetting in Deep Generative Models", NeurIPS 2023): forgetting as continual learning. The
model learns a *surrogate* for the data to forget while generative replay and an EWC penalty
hold on to everything else:

    loss = L_surrogate(forget cells) + L_replay + (λ/2) · Σ_i F_i (θ_i − θ*_i)²,

each L a negative ELBO (the paper's conditional VAE maximises log p(x | c) through its ELBO).

**Surrogate.** The paper maximises log p(x | c_f) for x drawn from a surrogate q(x | c_f)
(uniform noise, or another concept's images), so the forget condition c_f generates q. An
unconditional VAE has no c_f: a forget cell's "condition" is its own input. Here the encoder
reads the forget cell and the NB likelihood is that of a **surrogate count vector at the forget
cell's library size** (:func:`~scunlearn.methods.common.pair_loss`): ``surrogate:
retain_mean`` (default) = the mean expression profile of the retain cells (the mean over them
of counts / library size) × the forget cell's library size, expected (non-integer) counts, the
NB term exact for them — the forget cells are taught to decode as an average retained cell,
the analogue of the paper's mapping to another concept; ``uniform`` = the same library spread
evenly over the genes, the analogue of its uniform noise. Computed once; deterministic.

**Replay** (``replay``): ``generated`` = the paper's generative replay, cells sampled from the
**frozen baseline**: z ~ N(0, I), a library size drawn from the retain cells', the baseline's
NB mean (eval mode) and counts ~ NB(mean, θ) (Gamma–Poisson), one batch of ``batch_size`` per
step, fresh each step; ``retain`` = the control's retain batch (the retain cells are at hand
here, unlike in the paper's setting); ``both`` (default) = the mean of the two batches' losses.
The unconditional decoder samples every cell type, forget-like cells in proportion to the
baseline's density (few for a rare type; the paper replays remembered classes only, which needs
a label the VAE does not have).

**EWC.** F = the diagonal **empirical Fisher of the per-gene loss** of the baseline θ* on
``fisher_cells`` seeded retain cells: the mean over cells of each parameter's squared gradient
of the cell's negative ELBO / n_genes (eval mode, z = μ), exactly ``fisher``'s
(:func:`~scunlearn.methods.fisher.retain_fisher`; the paper's Fisher is over its replayed
samples' log-likelihood). Raw, not normalised. Scale: the per-gene loss's Fisher is
1/n_genes² of a per-cell (summed) log-likelihood's, and the whole loss is per gene, so λ here is
n_genes × the λ of a penalty written on a summed loss: the default 2·10⁵ is 100 × the 2000
genes of the PBMC study (config/config.yaml); on the toy test model (40 genes) the tests use
4000. The trajectory's ``ewc`` column shows what it weighs against the per-gene losses.

**Recipe and randomness.** The control's (:func:`~scunlearn.methods.common.finetune`: Adam at
``lr``, its seeded retain batches and their z / dropout draws, validation early stopping, best
epoch restored), the loss above passed as the ``extra_loss`` hook, written per cell (n_genes ×
the per-gene loss, which Adam does not see). Forget batches, generated cells and the z /
dropout draws of the surrogate and replay terms come from the method's own generator (seed + 1)
and forked RNGs: the retain stream is the control's; same seed ⇒ same model. **No guard**: every
term is a descent on a likelihood or a quadratic, bounded below.

Trajectory: epoch 0 = the baseline; one ``phase == "finetune"`` row per epoch with the retain
loss, ``surrogate_loss`` and ``replay_loss`` (generated cells; per gene, mean over the epoch's
steps), ``ewc`` (the penalty at the epoch's end) and the movement columns; ``phase == "final"``
= the returned (best-validation) model.
"""

from __future__ import annotations

import copy
import logging

import torch

from scunlearn.methods.common import ForgetStream, MembershipSet, _rng_devices, finetune, pair_loss
from scunlearn.methods.context import UnlearnContext
from scunlearn.methods.fisher import retain_fisher
from scunlearn.vae.model import VAE

log = logging.getLogger(__name__)


def surrogate_targets(forget: torch.Tensor, retain: torch.Tensor, kind: str) -> torch.Tensor:
    """Each forget cell's surrogate counts: a profile (retain mean, or uniform) × its library size."""
    if kind == "retain_mean":
        lib = retain.sum(-1, keepdim=True).clamp_min(1.0)
        profile = (retain.double() / lib.double()).mean(0)
    elif kind == "uniform":
        profile = torch.full((retain.shape[1],), 1.0 / retain.shape[1], dtype=torch.float64, device=retain.device)
    else:
        raise ValueError(f"unknown surrogate '{kind}'")
    return (forget.sum(-1, keepdim=True).double() * profile).to(forget.dtype)


@torch.no_grad()
def sample_cells(frozen: VAE, n: int, libraries: torch.Tensor) -> torch.Tensor:
    """``n`` cells from the frozen model: z ~ N(0, I), a library from ``libraries``, counts ~ NB(mean, θ).

    Draws from the global RNG (callers fork and seed it). NB as Gamma–Poisson: λ ~ Gamma(θ, θ/mean).
    """
    was = frozen.training
    frozen.eval()
    z = torch.randn(n, frozen.cfg.latent, device=libraries.device)
    lib = libraries[torch.randint(len(libraries), (n,), device=libraries.device)].unsqueeze(-1)
    mean = frozen.decode(z, lib)
    theta = frozen.log_theta.exp().expand_as(mean)
    rate = torch._standard_gamma(theta) * mean / theta
    frozen.train(was)
    return torch.poisson(rate)


def ewc_penalty(model: torch.nn.Module, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor],
                lam: float) -> torch.Tensor:
    """(λ/2) · Σ_i F_i (θ_i − θ*_i)² over every parameter entry."""
    total = sum((fisher[k] * (q - anchor[k]).pow(2)).sum() for k, q in model.named_parameters())
    return 0.5 * lam * total


class _AmnesiaLoss:
    """The ``extra_loss`` hook: surrogate + replay + EWC, per cell (n_genes × the per-gene loss)."""

    def __init__(self, model: VAE, ctx: UnlearnContext, p: dict, fisher: dict[str, torch.Tensor]):
        self.model, self.forget, self.replay, self.lam = model, ctx.forget, p["replay"], p["ewc_lambda"]
        self.targets = surrogate_targets(ctx.forget, ctx.retain, p["surrogate"])
        self.stream = ForgetStream(len(ctx.forget), p["batch_size"], ctx.seed, ctx.device)
        self.batch = p["batch_size"]
        self.devices = _rng_devices(ctx.device)
        self.fisher = fisher
        self.anchor = {k: q.detach().clone() for k, q in model.named_parameters()}
        self.frozen = copy.deepcopy(model).eval().requires_grad_(False) if self.replay != "retain" else None
        self.libraries = ctx.retain.sum(-1)
        self.n_genes = ctx.forget.shape[-1]
        self.surrogate: list[float] = []
        self.generated: list[float] = []

    def ewc(self) -> torch.Tensor:
        return ewc_penalty(self.model, self.fisher, self.anchor, self.lam)

    def __call__(self, retain_loss: torch.Tensor) -> torch.Tensor:
        idx = self.stream.next()
        seed = self.stream.seed()
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            surrogate = pair_loss(self.model, self.forget[idx], self.targets[idx])
            if self.frozen is not None:
                generated = self.model.loss(sample_cells(self.frozen, self.batch, self.libraries))
        if self.replay == "retain":
            replay = retain_loss
        elif self.replay == "generated":
            replay = generated
        else:
            replay = 0.5 * (retain_loss + generated)
        if not (torch.isfinite(surrogate) and torch.isfinite(replay)):
            raise ValueError("selective_amnesia: a loss term is not finite; lower lr")
        self.surrogate.append(float(surrogate.detach()) / self.n_genes)
        if self.frozen is not None:
            self.generated.append(float(generated.detach()) / self.n_genes)
        return surrogate + replay + self.n_genes * self.ewc()


def selective_amnesia(ctx: UnlearnContext) -> VAE:
    """Surrogate on forget cells + replay + EWC to the baseline (Heng & Soh 2023), with the control's recipe."""
    p, model = ctx.params, ctx.model
    model.eval()
    members = MembershipSet.build(model, ctx, p["match_k"])
    ctx.trajectory.log(epoch=0, step=0, phase="baseline", **members.losses(model))
    fisher = retain_fisher(model, ctx, p)
    flat = torch.cat([v.flatten() for v in fisher.values()])
    log.info("%s: retain Fisher (per-gene loss, %d cells) mean %.4g, max %.4g", ctx.trajectory.name,
             min(p["fisher_cells"], len(ctx.retain)), float(flat.mean()), float(flat.max()))
    terms = _AmnesiaLoss(model, ctx, p, fisher)
    n_genes = ctx.retain.shape[1]

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    def on_epoch(epoch: int, train_loss: float, val_elbo: float) -> None:
        with torch.no_grad():
            ewc = float(terms.ewc())
        ctx.trajectory.log(epoch=epoch, step=0, phase="finetune", **members.losses(model),
                           retain_loss=train_loss / n_genes, val_elbo=val_elbo,
                           surrogate_loss=mean(terms.surrogate), replay_loss=mean(terms.generated), ewc=ewc)
        terms.surrogate.clear()
        terms.generated.clear()

    finetune(model, ctx, epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], patience=p["patience"],
             on_epoch=on_epoch, extra_loss=terms)
    ctx.trajectory.log(epoch=len(ctx.trajectory.rows) - 1, step=0, phase="final", **members.losses(model))
    return model
