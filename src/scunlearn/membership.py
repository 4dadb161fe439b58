"""Membership features and the MLP attacker, shared by the audit and the adversarial unlearning methods.

Features (2·latent + 5; 69 for latent 32): μ, log σ², NB reconstruction NLL, KL, ELBO,
‖μ‖, ‖log σ²‖ — from a model in eval mode with z = μ. The attacker is a spectral-norm
MLP with class-balanced loss, scored out-of-fold. It lives here, apart from the audit
(:mod:`scunlearn.audit`), so that the judge and the judged share no audit code: changing
the audit never reruns an unlearning job.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .audit.metrics import auc_score
from .model import VAE, Terms, cell_terms
from .train import adam


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
    model.eval()
    f = features_from_terms(model.terms(x, sample=False))
    model.train(was)
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


def attacker_scorer(cfg: dict) -> Callable:
    """A ``fit(X_train, y_train, seed) -> score(X_test)`` function for :func:`oof_scores`."""

    def fit(Xtr, ytr, seed):
        att = fit_attacker(Xtr, ytr, cfg, seed)

        @torch.no_grad()
        def score(Xte):
            return att(torch.as_tensor(np.asarray(Xte), dtype=torch.float32)).numpy()

        return score

    return fit


def fold_splits(y: np.ndarray, folds: int, repeats: int, seed: int, groups=None):
    """(repeat, train, test) index triples of repeated stratified k-fold, grouped when ``groups`` is given.

    With matched negatives, a forget cell and the negatives chosen next to it must fall
    in the same fold: otherwise the attacker learns "this neighbourhood is negative" from
    the training fold and scores the held-out forget cell as negative, an anti-learning
    bias that drives null AUCs far below 0.5.
    """
    if groups is None:
        splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
        for i, (tr, te) in enumerate(splitter.split(np.zeros(len(y)), y)):
            yield i // folds, tr, te
        return
    for r in range(repeats):
        sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + r)
        for tr, te in sgkf.split(np.zeros(len(y)), y, groups):
            yield r, tr, te


def oof_scores(feats: np.ndarray, y: np.ndarray, fit: Callable, folds: int, repeats: int, seed: int,
               groups=None) -> np.ndarray:
    """Out-of-fold scores, shape (repeats, n): each cell scored only by attackers not trained on it."""
    y = np.asarray(y).astype(int)
    out = np.full((repeats, len(y)), np.nan)
    for i, (r, tr, te) in enumerate(fold_splits(y, folds, repeats, seed, groups)):
        score = fit(feats[tr], y[tr], seed * 100_003 + i)
        out[r, te] = score(feats[te])
    return out


def shadow_auc(feats: np.ndarray, y: np.ndarray, cfg: dict, seed: int, folds: int = 3, groups=None) -> float:
    """A quick single-repeat out-of-fold AUC: the shadow attacker used to steer unlearning."""
    folds = min(folds, int(y.sum()), int((1 - y).sum()))
    s = oof_scores(feats, y, attacker_scorer(cfg), folds, 1, seed, groups)[0]
    return auc_score(y, s)
