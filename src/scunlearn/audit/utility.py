"""Utility of a model: reconstruction error, marker-gene error, validation ELBO, latent accuracy."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..model import VAE, cell_terms, elbo


@torch.no_grad()
def reconstruction_mse(model: VAE, X: torch.Tensor, idx, gene_mask: np.ndarray | None = None,
                       target_sum: float = 1e4) -> float:
    """MSE between log-normalised counts and log-normalised decoder means (z = μ, with library).

    Both sides use the cell's HVG library size: log1p(x / Σx · target_sum) versus
    log1p(mean / Σx · target_sum), the decoder mean being softmax × library.
    """
    t = cell_terms(model, X, idx, keep_mean=True)
    x = X[torch.as_tensor(np.asarray(idx), dtype=torch.long, device=X.device)]
    lib = x.sum(1, keepdim=True).clamp_min(1.0)
    truth = torch.log1p(x / lib * target_sum)
    pred = torch.log1p(t.mean / lib * target_sum)
    if gene_mask is not None:
        m = torch.as_tensor(gene_mask, dtype=torch.bool, device=X.device)
        truth, pred = truth[:, m], pred[:, m]
    return float(((truth - pred) ** 2).mean())


def latent_accuracy(model: VAE, X: torch.Tensor, idx, labels, folds: int = 5, seed: int = 0) -> float:
    """Mean k-fold accuracy of a logistic regression predicting cell type from μ."""
    mu = cell_terms(model, X, idx).mu.double().cpu().numpy()
    labels = np.asarray(labels)
    # classes with fewer cells than folds cannot be stratified: drop them from this metric
    keep_cls = [c for c, n in zip(*np.unique(labels, return_counts=True)) if n >= folds]
    keep = np.isin(labels, keep_cls)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, mu[keep], labels[keep], cv=cv).mean())


def utility(model: VAE, X: torch.Tensor, *, recon_idx, val_idx, class_idx, labels, marker_mask,
            folds: int, seed: int, target_sum: float = 1e4) -> dict:
    """All utility metrics of one model (README, "What the audit does")."""
    return {
        "recon_mse": reconstruction_mse(model, X, recon_idx, None, target_sum),
        "marker_mse": reconstruction_mse(model, X, recon_idx, marker_mask, target_sum)
        if marker_mask is not None and marker_mask.any() else float("nan"),
        "val_elbo": elbo(model, X, val_idx),
        "latent_acc": latent_accuracy(model, X, class_idx, labels, folds, seed),
    }


def model_utility(model: VAE, X: torch.Tensor, part, labels: np.ndarray, marker_mask: np.ndarray, cfg: dict,
                  seed: int, target_sum: float = 1e4) -> dict:
    """:func:`utility` on the audit's seeded samples: reconstruction on unseen (validation + audit)
    cells, latent accuracy on all cells, each at most ``cfg['max_cells']``."""
    rng = np.random.default_rng(seed)
    unseen = np.r_[part.validation, part.audit]
    recon_idx = np.sort(rng.permutation(unseen)[: cfg["max_cells"]])
    class_idx = np.sort(rng.permutation(len(labels))[: cfg["max_cells"]])
    return utility(model, X, recon_idx=recon_idx, val_idx=part.validation, class_idx=class_idx,
                   labels=np.asarray(labels)[class_idx], marker_mask=marker_mask, folds=cfg["folds"], seed=seed,
                   target_sum=target_sum)
