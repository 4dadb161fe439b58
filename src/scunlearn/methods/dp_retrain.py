"""dp_retrain: a private-training anchor — a fresh VAE trained with DP-SGD on *all* training cells.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy"): each step samples
every training cell independently with probability q (Poisson sampling), clips each
cell's gradient to L2 norm ``max_grad_norm`` (C), sums, adds Gaussian noise N(0, σ²C²)
and takes an optimiser step on the noisy mean; the RDP accountant (Mironov 2017) turns
(σ, q, steps, δ) into the (ε, δ) the whole run satisfies. Implemented with Opacus
(Yousefpour et al. 2021): ``PrivacyEngine(accountant="rdp").make_private_with_epsilon``
(σ calibrated to a target ε over ``epochs``) or ``make_private`` with a given σ.

**What it is as an anchor.** The model is trained on retain ∪ forget: it never needed
unlearning. (ε, δ)-DP bounds how much any one cell — a forget cell included — can change
the distribution of the trained model, so a membership attack's advantage on it is bounded
(TPR ≤ e^ε · FPR + δ). It is audited like every method: where the audit sees the forget
cells as non-members of a DP model, the forget set's signal is within DP's noise; the
price is the utility lost to clipping and noise, and a guarantee chosen *before* training,
for every cell, instead of removal after a request.

**Per-sample gradients.** Opacus computes them with hooks on the VAE's ``Linear`` and
``LayerNorm`` layers. Two parts of the VAE need help: ``log_theta`` (the genes' inverse
dispersion) is a bare parameter of the VAE, which no Opacus layer owns, and the fused NB
loss :class:`~scunlearn.vae.likelihood.NBNLL` returns its gradient already summed over cells. Training here
goes through :class:`DPVAELoss`, which holds the VAE's own layers plus :class:`GeneTheta`
(a module that owns ``log_theta`` and returns it once per cell, with a grad sampler
registered for it: a cell's gradient w.r.t. ``log_theta`` is its row of the backprop),
and ``NBNLL`` with ``per_cell=True``, the fused NB loss with a per-cell θ input whose backward
returns each cell's own θ gradient (same forward, same per-gene tables). Every other
op is row-wise (LayerNorm normalises within a cell, dropout and z ~ q(z|x) are drawn per
cell), so no cell's loss depends on another's and the hooks' per-sample gradients are
exact. The loss is a mean over the batch of per-cell negative ELBOs per gene (the
methods' scale), told to Opacus as ``loss_reduction="mean"``; Opacus rescales by the
actual batch size before clipping and divides the noisy sum by the expected batch size.

**Validation.** The best epoch is chosen on validation cells (held out, never training
cells) and training stops after ``patience`` epochs without improvement once the KL
warm-up is over. This is post-processing: the accountant charges every step taken (ε of
the whole run, not of the chosen epoch), each epoch's model is a function of those noisy
steps, and the choice among them reads only non-training cells, so by DP's
post-processing property it costs the training cells no budget. (The validation cells
themselves get no DP guarantee; they are not training cells and no audit uses them.)
The guarantee covers the returned weights (and the per-epoch models); the trajectory's
``train_loss`` and ``forget_loss`` columns are noise-free diagnostics on training cells,
outside it, and nothing in training reads them.

Parameters (``methods.<variant>.params``): ``epsilon`` target ε (or null when
``noise_multiplier`` σ is given; exactly one of the two), ``delta`` (null = 1 / (10 ·
n_train), computed at run time: below 1/n as DP requires), ``max_grad_norm`` C (per-gene
loss scale), ``epochs`` (the planned epochs σ is calibrated for), ``lr`` (Adam on the
noisy gradient: post-processing), ``batch_size`` (expected batch under Poisson sampling;
q = 1 / ceil(n_train / batch_size), Opacus's rule), ``kl_warmup_epochs``, ``patience``,
``match_k`` (the trajectory's matched validation cells, as in every method).

Reported (``ctx.report`` → checkpoint meta → audit record): ``dp_epsilon`` (the RDP
accountant's ε at the end, for every step taken), ``dp_delta``, ``dp_noise_multiplier``,
``dp_sample_rate``, ``dp_steps``, ``dp_max_grad_norm``, ``dp_n_train``, ``dp_target_epsilon``,
``dp_epochs_run``, ``dp_best_epoch``.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn

from scunlearn import ScunlearnError
from scunlearn.methods.common import MembershipSet, _rng_devices
from scunlearn.methods.context import UnlearnContext
from scunlearn.vae.dropout import arm_dropout
from scunlearn.vae.likelihood import NBNLL, kl_normal, log_factorial_rows
from scunlearn.vae.model import VAE, build_vae, elbo
from scunlearn.vae.train import kl_weight


class GeneTheta(nn.Module):
    """Owns the VAE's ``log_theta`` (the same Parameter) and returns it once per cell of the input batch."""

    def __init__(self, log_theta: nn.Parameter):
        super().__init__()
        self.log_theta = log_theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_theta.expand(x.shape[0], -1)


def _register_grad_sampler() -> None:
    """Opacus grad sampler of :class:`GeneTheta`: output row i = log_theta, so cell i's gradient is backprop row i."""
    from opacus.grad_sample import register_grad_sampler

    @register_grad_sampler(GeneTheta)
    def _gene_theta_grad_sample(layer: GeneTheta, activations, backprops):
        return {layer.log_theta: backprops} if layer.log_theta.requires_grad else {}


class DPVAELoss(nn.Module):
    """The VAE's training loss per cell (negative ELBO / n_genes, sampled z) over the VAE's own layers.

    Children are the VAE's modules (shared, not copied) and a :class:`GeneTheta`, so every
    parameter sits in a layer Opacus computes per-sample gradients for. The mean of the
    output equals :func:`~scunlearn.methods.common.per_gene_loss` (same random draws).
    """

    def __init__(self, vae: VAE):
        super().__init__()
        self.encoder, self.mu, self.logvar = vae.encoder, vae.mu, vae.logvar
        self.decoder, self.px = vae.decoder, vae.px
        self.theta = GeneTheta(vae.log_theta)

    def forward(self, x: torch.Tensor, beta: float = 1.0, log_factorial: torch.Tensor | None = None) -> torch.Tensor:
        if self.training:  # the VAE's own order of random draws: dropout masks, then z
            arm_dropout((self.encoder, self.decoder), x.shape[0], x.device)
        hid = self.encoder(torch.log1p(x))
        mu, logvar = self.mu(hid), self.logvar(hid).clamp(-15.0, 15.0)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        nll = NBNLL.apply(self.px(self.decoder(z)), self.theta(x), x, x.sum(-1, keepdim=True), None, True)
        if log_factorial is None:
            with torch.no_grad():
                log_factorial = log_factorial_rows(x)
        return (nll + log_factorial + beta * kl_normal(mu, logvar)) / x.shape[-1]


def training_cells(ctx: UnlearnContext) -> torch.Tensor:
    """Every training cell: retain ∪ forget (this model never needed unlearning)."""
    return torch.cat([ctx.retain, ctx.forget])


def _check(p: dict, where: str) -> None:
    if (p["epsilon"] is None) == (p["noise_multiplier"] is None):
        raise ScunlearnError(f"{where}: set exactly one of epsilon (a target ε) and noise_multiplier "
                             f"(σ), the other null; got epsilon={p['epsilon']}, "
                             f"noise_multiplier={p['noise_multiplier']}")


class DPTraining:
    """The DP-SGD pieces of one run: the Opacus-wrapped loss module, DP optimiser, Poisson loader, engine.

    Built inside the caller's seeded RNG; the loader's sampling and the noise use their
    own generators seeded from ``seed`` (determinism on CPU for a seed).
    """

    def __init__(self, model: VAE, X: torch.Tensor, p: dict, seed: int, delta: float):
        from opacus import PrivacyEngine

        _register_grad_sampler()
        # known and harmless here: seeded (non-secure) noise is what determinism needs; the hooks
        # fire on module outputs because the counts need no gradient
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        self.model, self.X, self.delta = model, X, float(delta)
        self.log_fact = log_factorial_rows(X)
        n = len(X)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(n)),
                                             batch_size=int(p["batch_size"]),
                                             generator=torch.Generator().manual_seed(seed))
        noise_gen = torch.Generator(device=X.device).manual_seed(seed + 1)
        self.engine = PrivacyEngine(accountant="rdp")
        opt = torch.optim.Adam(model.parameters(), lr=p["lr"])
        common = dict(module=DPVAELoss(model), optimizer=opt, data_loader=loader,
                      max_grad_norm=float(p["max_grad_norm"]), loss_reduction="mean", poisson_sampling=True,
                      noise_generator=noise_gen, grad_sample_mode="hooks")
        if p["epsilon"] is not None:
            self.loss, self.opt, self.loader = self.engine.make_private_with_epsilon(
                target_epsilon=float(p["epsilon"]), target_delta=self.delta, epochs=int(p["epochs"]), **common)
        else:
            self.loss, self.opt, self.loader = self.engine.make_private(
                noise_multiplier=float(p["noise_multiplier"]), **common)
        self.sample_rate = 1.0 / len(loader)
        self.params = [q for q in self.loss.parameters() if q.requires_grad]

    def step(self, idx: torch.Tensor, beta: float) -> tuple[float, int]:
        """One DP-SGD step on the Poisson batch ``idx``: (summed per-cell loss, cells). An empty batch
        still takes the noisy step (the accountant counts it, and skipping it would reveal the empty batch)."""
        self.opt.zero_grad(set_to_none=True)
        idx = idx.to(self.X.device)
        if len(idx) == 0:
            for q in self.params:
                q.grad_sample = q.new_zeros((0, *q.shape))
            total = 0.0
        else:
            cell = self.loss(self.X[idx], beta, self.log_fact[idx])
            cell.mean().backward()
            total = float(cell.detach().sum())
        self.opt.step()
        return total, len(idx)

    def epsilon(self) -> float:
        """The RDP accountant's ε for every step taken so far, at this run's δ."""
        return float(self.engine.accountant.get_epsilon(self.delta)) if len(self.engine.accountant) else 0.0

    @property
    def steps(self) -> int:
        return int(sum(n for _, _, n in self.engine.accountant.history))

    def close(self) -> None:
        """Remove Opacus's hooks and per-sample attributes from the VAE's parameters."""
        self.opt.zero_grad(set_to_none=True)
        self.loss.cleanup()
        for q in self.model.parameters():
            q.grad = None
            for attr in ("grad_sample", "summed_grad", "_processed"):
                if hasattr(q, attr):
                    delattr(q, attr)


def dp_retrain(ctx: UnlearnContext) -> VAE:
    """Train a fresh VAE (the baseline's config, seeded from ``ctx.seed``) with DP-SGD on retain ∪ forget cells."""
    p = ctx.params
    _check(p, f"methods.{ctx.trajectory.name}.params")
    members = MembershipSet.build(ctx.model, ctx, p["match_k"])
    ctx.trajectory.log(epoch=0, step=0, phase="baseline", **members.losses(ctx.model))
    X = training_cells(ctx)
    n = len(X)
    delta = float(p["delta"]) if p["delta"] is not None else 1.0 / (10 * n)
    V = ctx.validation
    val_idx = np.arange(len(V))
    with torch.random.fork_rng(devices=_rng_devices(ctx.device)):
        torch.manual_seed(ctx.seed)
        model = build_vae(ctx.model.cfg).to(ctx.device)
        dp = DPTraining(model, X, p, ctx.seed, delta)
        best, best_state, best_epoch, bad, epoch = -np.inf, None, 0, 0, 0
        ctx.trajectory.expect("train", p["epochs"], upper_bound=True)  # patience may stop it early
        try:
            for epoch in range(1, p["epochs"] + 1):
                beta = kl_weight(epoch - 1, p["kl_warmup_epochs"])
                model.train()
                total, cells = 0.0, 0
                for (idx,) in dp.loader:
                    t, c = dp.step(idx, beta)
                    total, cells = total + t, cells + c
                val = elbo(model, V, val_idx)
                train_loss = total / max(cells, 1)
                if not (np.isfinite(train_loss) and np.isfinite(val)):
                    raise ScunlearnError(f"dp_retrain diverged at epoch {epoch}; lower "
                                         f"methods.{ctx.trajectory.name}.params.lr")
                if val > best:
                    best, best_state, best_epoch, bad = val, copy.deepcopy(model.state_dict()), epoch, 0
                else:
                    bad += 1
                ctx.trajectory.log(epoch=epoch, step=dp.steps, phase="train", **members.losses(model),
                                   train_loss=train_loss, val_elbo=val, kl_weight=beta, epsilon=dp.epsilon())
                if bad >= p["patience"] and epoch > p["kl_warmup_epochs"]:
                    break
        finally:
            dp.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    ctx.report.update(
        dp_epsilon=dp.epsilon(), dp_delta=delta, dp_noise_multiplier=float(dp.opt.noise_multiplier),
        dp_sample_rate=dp.sample_rate, dp_steps=dp.steps, dp_max_grad_norm=float(p["max_grad_norm"]),
        dp_n_train=int(n), dp_target_epsilon=None if p["epsilon"] is None else float(p["epsilon"]),
        dp_epochs_run=int(epoch), dp_best_epoch=int(best_epoch))
    ctx.trajectory.log(epoch=len(ctx.trajectory.rows) - 1, step=dp.steps, phase="final",
                       **members.losses(model), epsilon=dp.epsilon())
    return model

