"""Pieces shared by the adversarial methods: batches, the member/non-member set, the shadow attacker."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..audit.attack import feature_grad, features_from_terms, shadow_auc
from ..matched import matched_negatives
from ..model import VAE, cell_terms
from .context import UnlearnContext


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
        mu_f = cell_terms(model, ctx.forget, np.arange(nf))["mu"].double().cpu().numpy()
        mu_v = cell_terms(model, ctx.validation, np.arange(nv))["mu"].double().cpu().numpy()
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
        return shadow_auc(self.features(model), self.y.cpu().numpy(), cfg, seed, groups=self.groups)
