"""Pieces shared by the adversarial methods: batches, membership features and the shadow attacker."""

from __future__ import annotations

import numpy as np
import torch

from ..audit.attack import feature_grad, features_from_terms, shadow_auc
from ..model import VAE, cell_terms
from .context import UnlearnContext


def retain_batches(n: int, batch_size: int, gen: torch.Generator, device) -> list[torch.Tensor]:
    """Row indices of one shuffled pass over the retain cells, in batches (last partial one dropped if tiny)."""
    perm = torch.randperm(n, generator=gen).to(device)
    return [perm[s:s + batch_size] for s in range(0, n, batch_size) if n - s >= 2]


def membership_batch(ctx: UnlearnContext, n_val: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """All forget cells (label 1) and ``n_val`` random validation cells (label 0)."""
    v = torch.randperm(len(ctx.validation), generator=gen)[:n_val].to(ctx.device)
    x = torch.cat([ctx.forget, ctx.validation[v]])
    y = torch.cat([torch.ones(len(ctx.forget)), torch.zeros(len(v))]).to(ctx.device)
    return x, y


def membership_features(model: VAE, ctx: UnlearnContext, grad: bool = False):
    """Features of forget + all validation cells and their labels (1 = forget)."""
    x = torch.cat([ctx.forget, ctx.validation])
    y = np.r_[np.ones(len(ctx.forget)), np.zeros(len(ctx.validation))]
    if grad:
        return feature_grad(model, x), y
    idx = np.arange(len(x))
    return features_from_terms(cell_terms(model, x, idx)).double().cpu().numpy(), y


def shadow(model: VAE, ctx: UnlearnContext, cfg: dict, seed: int) -> float:
    """Shadow attacker's out-of-fold AUC, forget vs validation cells: the method's own progress signal."""
    f, y = membership_features(model, ctx)
    return shadow_auc(f, y, cfg, seed)
