"""Pieces shared by the methods: the loss scale, batches, the member/non-member set, the
forget-loss probe logged in every trajectory, gradient shares, and retain fine-tuning.

**Loss scale.** Every loss term a method weighs against another is on a *per-gene* scale:
the negative ELBO of a cell divided by the number of genes (≈ 0.9 nats per gene on the
demo, against ≈ 540 nats per cell summed). The paper's reference code averaged its
reconstruction loss over matrix elements, and its λ (retain weight), α (step) and
damping were chosen for that scale; a BCE membership term is also ≈ 0.7 per cell. With
the loss summed over genes the retain term outweighs the attacker term ~600-fold and
λ = 5 and λ = 10 give the same model. :func:`per_gene_loss` is that scale.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from scunlearn.membership.attackers import _rng_devices, feature_grad, features_from_terms, shadow_auc
from scunlearn.membership.matched import matched_negatives
from scunlearn.methods.context import UnlearnContext
from scunlearn.vae.likelihood import NBNLL, kl_normal, log_factorial_rows
from scunlearn.vae.model import VAE, cell_terms, elbo, set_training
from scunlearn.vae.train import adam, rows_loss, run_epoch


def per_gene_loss(model: VAE, x: torch.Tensor, beta: float = 1.0, *, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over cells of the (sampled-z) negative ELBO divided by the number of genes.

    With ``rows``, the cells are rows ``rows`` of the count tensor ``x`` (a method's retain
    cells, say): the same value, with their NB table rows and log-factorials read from
    x's per-tensor caches instead of computed per batch (as training does).
    """
    loss = model.loss(x, beta=beta) if rows is None else rows_loss(model, x, rows, beta)
    return loss / x.shape[-1]


@torch.no_grad()
def per_gene_cell_loss(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """Per-cell negative ELBO / n_genes, deterministic (eval mode, z = μ)."""
    t = cell_terms(model, x, np.arange(len(x)))
    return (t.nll + t.kl) / x.shape[-1]


def cell_loss_grad(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """Per-cell negative ELBO / n_genes, deterministic (eval mode, z = μ), *with* gradients.

    :func:`per_gene_cell_loss` with autograd on; the model's training mode is restored, and no
    random number is drawn (no dropout, no z sample), so a caller inside a training loop leaves
    its random stream untouched.
    """
    was = model.training
    set_training(model, False)
    try:
        t = model.terms(x, sample=False, fused=True)
    finally:
        set_training(model, was)
    return (t.nll + t.kl) / x.shape[-1]


def pair_loss(model: VAE, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over cells of the negative ELBO of ``target`` counts with the posterior of ``x``:
    the encoder reads ``x``, z is sampled, the NB mean is the decoder's softmax times the
    *target's* library size, and the NB likelihood is the target's (per cell, summed over
    genes; + KL(q(z|x) ‖ N(0, I))). With ``target`` = ``x`` it is ``model.loss(x)`` (same draws,
    same value). ``target`` may be non-integer (expected counts): the NB term is then exact.
    Draws dropout masks and z from the global RNG, like ``model.loss``.
    """
    model._arm_dropout(x)
    mu, logvar = model.encode(x)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    library = target.sum(-1, keepdim=True)
    nll = NBNLL.apply(model.px(model.decoder(z)), model.log_theta, target, library, None)
    with torch.no_grad():
        log_factorial = log_factorial_rows(target)
    return (nll + log_factorial + kl_normal(mu, logvar)).mean()


class ForgetStream:
    """Shuffled passes over the forget cells' row numbers in batches of ``batch_size`` (capped at
    the forget set), cycled, from the method's own generator (``seed + 1``): never the retain
    stream, so the retain batches, z and dropout draws of :func:`finetune` stay the control's.
    :meth:`seed` draws a seed for a forked RNG from the same generator (for a term that samples z
    or dropout). The pattern of ``neggrad_plus``'s forget batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device):
        self.n, self.batch, self.device = n, min(batch_size, n), device
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.order: list[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        if not self.order:
            perm = torch.randperm(self.n, generator=self.gen).to(self.device)
            self.order = [perm[s:s + self.batch] for s in range(0, self.n, self.batch)]
        return self.order.pop(0)

    def seed(self) -> int:
        return int(torch.randint(2**62, (1,), generator=self.gen))


def retain_batches(n: int, batch_size: int, gen: torch.Generator, device) -> list[torch.Tensor]:
    """Row indices of one shuffled pass over the retain cells, in batches (last partial one dropped if tiny)."""
    perm = torch.randperm(n, generator=gen).to(device)
    return [perm[s:s + batch_size] for s in range(0, n, batch_size) if n - s >= 2]


@dataclass
class MembershipSet:
    """Forget cells (members) and the validation cells matched to them (non-members).

    Built like the audit's matched negatives, but from validation cells: the k nearest
    validation cells of each forget cell in the starting model's μ, grown to at least
    as many cells as the forget set. Unmatched validation cells would be mostly other
    cell types, and an adversary would learn "cell type", not "membership".
    """

    x: torch.Tensor          # forget rows, then matched validation rows
    y: torch.Tensor          # 1 = forget
    groups: np.ndarray       # each matched cell grouped with its nearest forget cell
    n_forget: int

    @classmethod
    def build(cls, model: VAE, ctx: UnlearnContext, k: int) -> "MembershipSet":
        nf, nv = len(ctx.forget), len(ctx.validation)
        mu_f = cell_terms(model, ctx.forget, np.arange(nf)).mu.double().cpu().numpy()
        mu_v = cell_terms(model, ctx.validation, np.arange(nv)).mu.double().cpu().numpy()
        res = matched_negatives(mu_f, mu_v, np.arange(nv).astype(str), k, min(nf, nv),
                                forget_barcodes=np.arange(nf).astype(str))
        vi = torch.as_tensor(np.asarray(res["barcodes"], dtype=int), device=ctx.device)
        x = torch.cat([ctx.forget, ctx.validation[vi]])
        y = torch.cat([torch.ones(nf), torch.zeros(len(vi))]).to(ctx.device)
        groups = np.r_[np.arange(nf), np.asarray(res["nearest_forget"], dtype=int)]
        return cls(x, y, groups, nf)

    def features(self, model: VAE, grad: bool = False):
        """Attack features of every member and matched non-member (with gradients into the VAE if ``grad``)."""
        if grad:
            return feature_grad(model, self.x)
        return features_from_terms(cell_terms(model, self.x, np.arange(len(self.x)))).double().cpu().numpy()

    def batch(self, n_val: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """All forget cells and ``n_val`` random matched validation cells."""
        n_matched = len(self.x) - self.n_forget
        v = self.n_forget + torch.randperm(n_matched, generator=gen)[:n_val].to(self.x.device)
        idx = torch.cat([torch.arange(self.n_forget, device=self.x.device), v])
        return self.x[idx], self.y[idx]

    def shadow(self, model: VAE, cfg: dict, seed: int) -> float:
        """A fresh shadow attacker's grouped out-of-fold AUC: the method's own progress signal."""
        return shadow_auc(self.features(model), self.y.cpu().numpy(), cfg, seed, groups=self.groups,
                          device=self.x.device)

    def losses(self, model: VAE) -> dict[str, float]:
        """The trajectory's movement columns, deterministic (eval mode, z = μ), per gene:

        ``forget_loss`` (mean over forget cells), ``val_loss`` (mean over the matched
        validation cells) and ``loss_gap`` = forget_loss − val_loss. Members fit better
        than unseen neighbours, so the baseline's gap is below 0; a LOSS attacker uses
        exactly this gap, and forgetting shows as forget_loss rising towards val_loss.
        """
        cell = per_gene_cell_loss(model, self.x)
        f, v = cell[: self.n_forget].mean(), cell[self.n_forget:].mean()
        return {"forget_loss": float(f), "val_loss": float(v), "loss_gap": float(f - v)}


def grad_norm(grads) -> float:
    """Euclidean norm of a list of gradients (``None`` entries count as zero), accumulated in float64.

    One fused op over the list (``torch._foreach_norm``) instead of a float64 copy, a square
    and a sum per tensor: it is computed every step of the adversarial methods.
    """
    gs = [g.detach() for g in grads if g is not None]
    if not gs:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gs, 2, dtype=torch.float64))))


def shares(norms: dict[str, float]) -> dict[str, float]:
    """Each term's gradient share ‖g_term‖ / Σ ‖g‖ as ``grad_share_<term>`` columns."""
    tot = sum(norms.values()) or 1.0
    return {f"grad_share_{k}": v / tot for k, v in norms.items()}


def finetune(model: VAE, ctx: UnlearnContext, *, epochs: int, lr: float, batch_size: int, patience: int,
             on_epoch: Callable[[int, float, float], None] | None = None,
             extra_loss: Callable[[torch.Tensor], torch.Tensor] | None = None) -> VAE:
    """Fine-tune on retain cells only: the recipe shared by ``fisher``'s second phase and
    the ``retain_finetune`` control, so the two are bit-identical for the same seed.

    Adam at ``lr``, one seeded shuffled pass over the retain cells per epoch (β = 1, sampled
    z, dropout on), validation ELBO after each epoch, stop after ``patience`` epochs
    without improvement, restore the best epoch. Every random draw (shuffles, z, dropout)
    comes from ``ctx.seed`` alone, inside a forked RNG: what ran before does not matter.
    ``on_epoch(epoch, train_loss, val_elbo)`` is called after each epoch (1-based); the trajectory's
    ``finetune`` rows it logs count the epochs against ``epochs`` (:meth:`Trajectory.expect`).

    ``extra_loss(retain_loss) -> loss`` (``neggrad_plus``) replaces each batch's loss (the
    mean per-cell negative ELBO of the retain batch) by what it returns; a hook that draws
    randomness must take it from its own generator / forked RNG, so that the retain
    batches, z and dropout stay those of the control (it is ``run_epoch``'s ``objective``).
    """
    X = torch.cat([ctx.retain, ctx.validation])
    nr = len(ctx.retain)
    train_idx = torch.arange(nr, device=X.device)
    val_idx = np.arange(nr, len(X))
    ctx.trajectory.expect("finetune", epochs, upper_bound=True)  # patience may stop it early
    with torch.random.fork_rng(devices=_rng_devices(ctx.device)):
        torch.manual_seed(ctx.seed)
        gen = torch.Generator().manual_seed(ctx.seed)
        opt = adam(model.parameters(), lr)
        best, best_state, bad = -np.inf, None, 0
        for epoch in range(1, epochs + 1):
            train_loss = run_epoch(model, opt, X, train_idx, batch_size, 1.0, gen, objective=extra_loss)
            val = elbo(model, X, val_idx)
            if not (np.isfinite(train_loss) and np.isfinite(val)):
                raise ValueError(f"fine-tuning diverged at epoch {epoch}; lower the fine-tuning lr")
            if val > best:
                best, best_state, bad = val, copy.deepcopy(model.state_dict()), 0
            else:
                bad += 1
            if on_epoch is not None:
                on_epoch(epoch, train_loss, val)
            if bad >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model


def finetune_members(ctxs: list[UnlearnContext], *, epochs: int, lr: float, batch_size: int, patience: int,
                     on_epochs: list[Callable[[int, float, float], None]] | None = None) -> list[VAE]:
    """:func:`finetune` of K members at once (one per context, same cells, each its own seed and model):
    their weights stacked, every step one batched step (:class:`scunlearn.vae.batched.Ensemble`).

    Member k draws its data order, z and dropout from generators seeded with its ``ctx.seed`` as
    :func:`finetune` seeds them, keeps its own Adam state and stops on its own validation ELBO, so it
    is the solo run up to float rounding (batched kernels sum in another order). ``on_epochs[k]`` is
    member k's ``on_epoch``, called with ``ctx.model`` holding that epoch's weights. Returns the
    contexts' models, each at its best validation epoch, in eval mode.
    """
    from scunlearn.vae.batched import Ensemble

    if not ctxs:
        return []
    first = ctxs[0]
    for c in ctxs[1:]:
        if c.retain.shape != first.retain.shape or not torch.equal(c.retain, first.retain) \
                or not torch.equal(c.validation, first.validation):
            raise ValueError("finetune_members: the members must fine-tune on the same retain and validation cells")
    X = torch.cat([first.retain, first.validation])
    nr = len(first.retain)
    train_idx = torch.arange(nr, device=X.device)
    val_idx = np.arange(nr, len(X))
    dev = X.device
    starts = []
    for c in ctxs:
        c.trajectory.expect("finetune", epochs, upper_bound=True)
        gen = torch.Generator(device=dev) if dev.type != "cpu" else torch.Generator()
        starts.append(({n: t.detach().clone() for n, t in c.model.state_dict().items()}, gen.manual_seed(c.seed)))
    ens = Ensemble(first.model.cfg, [c.seed for c in ctxs], dev, lr, step="eager", starts=starts)
    K = len(ctxs)
    best, best_state, bad = [-np.inf] * K, [None] * K, [0] * K
    for epoch in range(1, epochs + 1):
        if not ens.active:
            break
        for i in ens.active:  # each active member passes every retain cell once (the meter cannot see the stack)
            ctxs[i].report["cell_passes"] = ctxs[i].report.get("cell_passes", 0) + len(train_idx) - (
                1 if len(train_idx) % batch_size == 1 else 0)
        train_loss = ens.run_epoch(X, train_idx, batch_size, 1.0)
        val = ens.model.elbo(X, val_idx).tolist()
        stopped = []
        for pos, i in enumerate(ens.active):
            if not (np.isfinite(train_loss[pos]) and np.isfinite(val[pos])):
                raise ValueError(f"fine-tuning diverged at epoch {epoch} (seed {ctxs[i].seed}); lower the "
                                 "fine-tuning lr")
            state = ens.model.member_state(pos)
            if val[pos] > best[i]:
                best[i], best_state[i], bad[i] = val[pos], state, 0
            else:
                bad[i] += 1
            if on_epochs is not None:
                ctxs[i].model.load_state_dict(state)
                on_epochs[i](epoch, train_loss[pos], val[pos])
            if bad[i] >= patience:
                stopped.append(pos)
        ens.drop(stopped)
    out = []
    for i, c in enumerate(ctxs):
        if best_state[i] is not None:
            c.model.load_state_dict(best_state[i])
        c.model.eval()
        out.append(c.model)
    return out
