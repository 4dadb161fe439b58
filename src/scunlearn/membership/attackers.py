"""Membership features and the MLP attacker, shared by the audit and the adversarial unlearning methods.

Features (2·latent + 5; 69 for latent 32): μ, log σ², NB reconstruction NLL, KL, ELBO,
‖μ‖, ‖log σ²‖ — from a model in eval mode with z = μ. The attacker is a spectral-norm
MLP with class-balanced loss, scored out-of-fold: one at a time (:class:`Attacker`) or
several as one batched model (:class:`BatchedAttackers`: the audit's fold attackers, the
shadow attacker's folds, extragradient's adversaries). It lives here, apart from the audit
(:mod:`scunlearn.audit`), so that the judge and the judged share no audit code: changing
the audit never reruns an unlearning job.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from scunlearn.costs import Progress
from scunlearn.data.folds import repeated_stratified_test_folds, splits_from_folds
from scunlearn.membership.metrics import auc_score
from scunlearn.vae.dropout import dropout_keep
from scunlearn.vae.model import VAE, Terms, cell_terms, set_training
from scunlearn.vae.train import adam

log = logging.getLogger(__name__)

#: the label under which :func:`fit_score_batched` logs its progress (None: silent, as the methods' shadows)
_PROGRESS_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("attack_progress", default=None)


@contextlib.contextmanager
def logged_progress(label: str):
    """Inside, batched attacker training logs its progress as ``label: epoch i/n of B attackers, …, ETA …``.

    About ten lines per training, for the audit's MLP attack (minutes per model on big data); the
    methods' shadow and critic attackers, trained every few epochs, stay silent outside it.
    """
    token = _PROGRESS_LABEL.set(label)
    try:
        yield
    finally:
        _PROGRESS_LABEL.reset(token)


def feature_names(latent: int) -> list[str]:
    """Names of the columns of :func:`features_from_terms`, in order."""
    return ([f"mu_{i}" for i in range(latent)] + [f"logvar_{i}" for i in range(latent)]
            + ["nll", "kl", "elbo", "mu_norm", "logvar_norm"])


def features_from_terms(t: Terms) -> torch.Tensor:
    """Stack the per-cell attack features from :meth:`VAE.terms` output (differentiable)."""
    elbo = t.elbo
    return torch.cat(
        [t.mu, t.logvar, t.nll[:, None], t.kl[:, None], elbo[:, None],
         t.mu.norm(dim=1, keepdim=True), t.logvar.norm(dim=1, keepdim=True)],
        dim=1,
    )


def model_features(model: VAE, X: torch.Tensor, idx) -> np.ndarray:
    """Attack features of rows ``idx`` (eval mode, z = μ, no grad) as a float64 array."""
    return features_from_terms(cell_terms(model, X, idx)).double().cpu().numpy()


def feature_grad(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """Attack features of a batch with gradients flowing into the VAE (dropout off)."""
    was = model.training
    set_training(model, False)
    f = features_from_terms(model.terms(x, sample=False, fused=True))
    set_training(model, was)
    return f


class Attacker(nn.Module):
    """MLP d → hidden… → 1 logit, spectral norm on every linear layer, built-in standardisation."""

    def __init__(self, d: int, hidden=(256, 256), dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip([d, *hidden[:-1]], hidden):
            layers += [spectral_norm(nn.Linear(a, b)), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(spectral_norm(nn.Linear(hidden[-1], 1)))
        self.net = nn.Sequential(*layers)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))

    def set_standardisation(self, feats: torch.Tensor) -> None:
        """Standardise with statistics of these (training) features only."""
        self.mean.copy_(feats.mean(0))
        self.std.copy_(feats.std(0).clamp_min(1e-6))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net((feats - self.mean) / self.std).squeeze(-1)


class BatchedAttackers(nn.Module):
    """``B`` independent spectral-norm MLP attackers trained as one batched model.

    Same architecture and training as :class:`Attacker` (one power iteration of the
    spectral norm per training step, Adam, class-balanced BCE), but every layer is a
    batched matmul over the B attackers, so the k × repeats fold attackers of an audit
    cost about as much as one. Inputs come standardised (:func:`fit_score_batched`: with
    each attacker's own training rows). ``init_power_iterations``: power iterations at
    construction (torch's ``spectral_norm`` does 15).
    """

    def __init__(self, B: int, d: int, hidden=(256, 256), dropout: float = 0.3, init_power_iterations: int = 0):
        super().__init__()
        sizes = [d, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            bound = 1 / np.sqrt(a)  # nn.Linear's default initialisation
            self.weights.append(nn.Parameter(torch.empty(B, b, a).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(B, b).uniform_(-bound, bound)))
            self.register_buffer(f"u{i}", nn.functional.normalize(torch.randn(B, b), dim=1))
            self._power_iterations(i, init_power_iterations)
        self.dropout = dropout

    @torch.no_grad()
    def _power_iterations(self, i: int, n: int) -> None:
        """``n`` power iterations of layer i's left singular vector estimate ``u``, in place."""
        W, u = self.weights[i], getattr(self, f"u{i}")
        for _ in range(n):
            v = nn.functional.normalize(torch.bmm(W.transpose(1, 2), u[:, :, None])[..., 0], dim=1)
            u.copy_(nn.functional.normalize(torch.bmm(W, v[:, :, None])[..., 0], dim=1))

    def _sigma(self, i: int) -> torch.Tensor:
        """Layer i's spectral norms (B,), by one power iteration when training (differentiable in W)."""
        W, u = self.weights[i], getattr(self, f"u{i}")
        if self.training:
            self._power_iterations(i, 1)
        v = nn.functional.normalize(torch.bmm(W.transpose(1, 2), u[:, :, None])[..., 0], dim=1).detach()
        return (u[:, :, None] * torch.bmm(W, v[:, :, None])).sum((1, 2))

    def _layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """``h @ (W / sigma)^T + b`` for layer i, dividing whichever side is smaller by sigma.

        The same function as dividing the weights (``W / sigma``, as ``spectral_norm`` does), but
        scaling the (B, n, in) input or (B, n, out) output instead of the (B, out, in) weights
        and their gradient made a training step ~2x cheaper for the audit's small folds.
        """
        W, b, sigma = self.weights[i], self.biases[i], self._sigma(i)[:, None, None]
        if W.shape[2] <= W.shape[1]:  # in <= out: scale the input
            return torch.baddbmm(b[:, None, :], h / sigma, W.transpose(1, 2))
        return torch.bmm(h, W.transpose(1, 2)) / sigma + b[:, None, :]

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        """Logits (B, n) of standardised inputs ``xs`` (B, n, d)."""
        h = xs
        last = len(self.weights) - 1
        for i in range(len(self.weights)):
            h = self._layer(i, h)
            if i < last:
                h = _relu_dropout(h, self.dropout) if self.training and self.dropout > 0 else torch.relu(h)
        return h[..., 0]


def _relu_dropout(h: torch.Tensor, p: float) -> torch.Tensor:
    """``dropout(relu(h), p)`` as one multiplicative mask: keep (probability 1 - p) and h > 0, scaled by 1 / (1 - p).

    The same values and gradients as the two ops. The keep draw is the VAE's
    (:func:`~scunlearn.vae.dropout.dropout_keep`: 16-bit uniforms, four per random word, p rounded
    to a multiple of 2⁻¹⁶): a float uniform per entry (``torch.rand``) was a tenth of an
    attack step, ``bernoulli_`` before it a quarter.
    """
    with torch.no_grad():
        if p >= 1:  # drops everything, as nn.functional.dropout
            return h * 0.0
        keep, scale = dropout_keep(h.shape, p, h.device)
        mask = keep.logical_and_(h > 0).to(h.dtype).mul_(scale)
    return h * mask


def _rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose RNG a forked RNG must save and restore (none on the CPU)."""
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


def fit_score_batched(feats: np.ndarray, y: np.ndarray, masks: np.ndarray, cfg: dict, seed: int,
                      device: torch.device | str | None = None) -> np.ndarray:
    """Train one attacker per row of ``masks`` (its training rows) and score every cell: (B, n).

    Each attacker's forward and backward pass runs over its own training rows only (padded
    to the largest fold with zero weight), not over all cells with the held-out ones
    weighted zero: the same loss, about a fifth less work.
    """
    masks = np.asarray(masks, dtype=bool)
    dev = torch.device(device if device is not None else "cpu")
    with torch.random.fork_rng(devices=_rng_devices(dev)):
        torch.manual_seed(seed)
        X = torch.as_tensor(np.asarray(feats), dtype=torch.float32, device=dev)
        yt = torch.as_tensor(np.asarray(y), dtype=torch.float32, device=dev)
        M = torch.as_tensor(masks, dtype=torch.float32, device=dev)  # (B, n)
        cnt = M.sum(1, keepdim=True)
        mean = M @ X / cnt
        std = ((M @ X**2) / cnt - mean**2).clamp_min(0).mul(cnt / (cnt - 1).clamp_min(1)).sqrt().clamp_min(1e-6)
        xs = (X[None] - mean[:, None]) / std[:, None]  # (B, n, d): every cell, each attacker's standardisation
        # each attacker's training rows, padded with row 0 at weight 0
        width = max(1, int(masks.sum(1).max()))
        rows = np.zeros((len(masks), width), dtype=np.int64)
        valid = np.zeros((len(masks), width), dtype=bool)
        for b, m in enumerate(masks):
            r = np.flatnonzero(m)
            rows[b, : len(r)], valid[b, : len(r)] = r, True
        rows_t = torch.as_tensor(rows, device=dev)
        xt = torch.gather(xs, 1, rows_t[:, :, None].expand(-1, -1, xs.shape[2]))  # (B, width, d)
        target = yt[rows_t]
        n_pos = (M * yt).sum(1).clamp_min(1.0)
        pos_weight = (cnt[:, 0] - n_pos) / n_pos  # class balance of each attacker's own fold
        w = torch.as_tensor(valid, dtype=torch.float32, device=dev) * torch.where(target.bool(), pos_weight[:, None],
                                                                                   1.0)
        # built on the CPU (its initial draws from the CPU generator, as before devices existed), then moved
        att = BatchedAttackers(M.shape[0], X.shape[1], tuple(cfg["hidden"]), cfg["dropout"]).to(dev)
        params = list(att.parameters())
        opt = adam(params, cfg["lr"], weight_decay=cfg["weight_decay"])
        att.train()
        label, epochs = _PROGRESS_LABEL.get(), int(cfg["epochs"])
        progress, every = Progress(epochs), max(1, epochs // 10)
        for e in range(1, epochs + 1):
            bce = nn.functional.binary_cross_entropy_with_logits(att(xt), target, reduction="none")
            # per attacker: mean of its weighted training rows (as bce_balanced), summed over attackers
            loss = ((bce * w).sum(1) / cnt[:, 0]).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if label is not None and (e % every == 0 or e == epochs):
                log.info("%s: %s of %d fold attackers (one batched model), %s", label, progress.count(e),
                         len(masks), progress.timing(e))
        att.eval()
        with torch.no_grad():
            return att(xs).double().cpu().numpy()


def bce_balanced(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with positives up-weighted by n_neg / n_pos (class balance)."""
    n_pos = y.sum().clamp_min(1.0)
    pos_weight = (len(y) - n_pos) / n_pos
    return nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)


def fit_attacker(feats: np.ndarray | torch.Tensor, y, cfg: dict, seed: int) -> Attacker:
    """Train a fresh attacker full-batch on (feats, y); standardisation from these rows only."""
    with torch.random.fork_rng(devices=[]):  # seed this attacker without resetting the caller's RNG
        return _fit_attacker(feats, y, cfg, seed)


def _fit_attacker(feats, y, cfg: dict, seed: int) -> Attacker:
    torch.manual_seed(seed)
    Xt = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.float32)
    att = Attacker(Xt.shape[1], tuple(cfg["hidden"]), cfg["dropout"])
    att.set_standardisation(Xt)
    opt = adam(att.parameters(), cfg["lr"], weight_decay=cfg["weight_decay"])
    att.train()
    for _ in range(cfg["epochs"]):
        loss = bce_balanced(att(Xt), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    att.eval()
    return att


def fold_splits(y: np.ndarray, folds: int, repeats: int, seed: int, groups=None):
    """(repeat, train, test) index triples of repeated stratified k-fold, grouped when ``groups`` is given.

    With matched negatives, a forget cell and the negatives chosen next to it must fall
    in the same fold: otherwise the attacker learns "this neighbourhood is negative" from
    the training fold and scores the held-out forget cell as negative, an anti-learning
    bias that drives null AUCs far below 0.5.
    """
    yield from splits_from_folds(repeated_stratified_test_folds(y, folds, repeats, seed, groups), folds)


def held_out_scores(feats: np.ndarray, y: np.ndarray, splits, cfg: dict, seed: int,
                    device: torch.device | str | None = None) -> list[np.ndarray]:
    """Each (repeat, train, test) split's held-out scores: one attacker per split, trained on its
    train rows, all trained as one batched model (:func:`fit_score_batched`, on ``device``)."""
    splits = list(splits)
    masks = np.zeros((len(splits), len(y)), dtype=bool)
    for i, (_, tr, _) in enumerate(splits):
        masks[i, tr] = True
    scores = fit_score_batched(feats, y, masks, cfg, seed, device)
    return [scores[i, te] for i, (_, _, te) in enumerate(splits)]


def shadow_auc(feats: np.ndarray, y: np.ndarray, cfg: dict, seed: int, folds: int = 3, groups=None,
               device: torch.device | str | None = None) -> float:
    """A quick single-repeat out-of-fold AUC: the shadow attacker used to steer unlearning.

    Each cell is scored by the attacker of the fold that held it out (:func:`held_out_scores`),
    and the scores pooled.
    """
    y = np.asarray(y).astype(int)
    folds = min(folds, int(y.sum()), int((1 - y).sum()))
    splits = list(fold_splits(y, folds, 1, seed, groups))
    s = np.full(len(y), np.nan)
    for (_, _, te), scores in zip(splits, held_out_scores(feats, y, splits, cfg, seed, device)):
        s[te] = scores
    return auc_score(y, s)
