"""The paper's MLP attack in the audit: fresh attackers per model, trained batched, scored per fold.

The features and the single attacker are in :mod:`scunlearn.membership` (shared with the
adversarial methods); this module trains the k × repeats fold attackers of one audit as
one batched model and scores them without bias (:func:`mia`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..membership import feature_names, fold_splits, model_features  # noqa: F401  (re-exported for the audit)
from .metrics import auc_score, tpr_at_fpr


class BatchedAttackers(nn.Module):
    """``B`` independent spectral-norm MLP attackers trained as one batched model.

    Same architecture and training as :class:`Attacker` (one power iteration of the
    spectral norm per training step, Adam, class-balanced BCE), but every layer is a
    batched matmul over the B attackers, so the k × repeats fold attackers of an audit
    cost about as much as one. Attacker b sees only the rows ``masks[b]`` (its training
    fold), standardised with those rows' statistics.
    """

    def __init__(self, B: int, d: int, hidden=(256, 256), dropout: float = 0.3):
        super().__init__()
        sizes = [d, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            bound = 1 / np.sqrt(a)  # nn.Linear's default initialisation
            self.weights.append(nn.Parameter(torch.empty(B, b, a).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(B, b).uniform_(-bound, bound)))
            self.register_buffer(f"u{i}", nn.functional.normalize(torch.randn(B, b), dim=1))
        self.dropout = dropout

    def _normalised(self, i: int) -> torch.Tensor:
        """Layer i's weights divided by their spectral norms (power iteration when training)."""
        W, u = self.weights[i], getattr(self, f"u{i}")
        if self.training:
            with torch.no_grad():
                v = nn.functional.normalize(torch.bmm(W.transpose(1, 2), u[:, :, None])[..., 0], dim=1)
                u.copy_(nn.functional.normalize(torch.bmm(W, v[:, :, None])[..., 0], dim=1))
        v = nn.functional.normalize(torch.bmm(W.transpose(1, 2), u[:, :, None])[..., 0], dim=1).detach()
        sigma = (u[:, :, None] * torch.bmm(W, v[:, :, None])).sum((1, 2))
        return W / sigma[:, None, None]

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        """Logits (B, n) of standardised inputs ``xs`` (B, n, d)."""
        h = xs
        last = len(self.weights) - 1
        for i in range(len(self.weights)):
            h = torch.baddbmm(self.biases[i][:, None, :], h, self._normalised(i).transpose(1, 2))
            if i < last:
                h = nn.functional.dropout(torch.relu(h), self.dropout, self.training)
        return h[..., 0]


def fit_score_batched(feats: np.ndarray, y: np.ndarray, masks: np.ndarray, cfg: dict, seed: int) -> np.ndarray:
    """Train one attacker per row of ``masks`` (its training rows) and score every cell: (B, n)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        X = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
        yt = torch.as_tensor(np.asarray(y), dtype=torch.float32)
        M = torch.as_tensor(np.asarray(masks), dtype=torch.float32)  # (B, n)
        cnt = M.sum(1, keepdim=True)
        mean = M @ X / cnt
        std = ((M @ X**2) / cnt - mean**2).clamp_min(0).mul(cnt / (cnt - 1).clamp_min(1)).sqrt().clamp_min(1e-6)
        xs = (X[None] - mean[:, None]) / std[:, None]
        n_pos = (M * yt).sum(1).clamp_min(1.0)
        pos_weight = (cnt[:, 0] - n_pos) / n_pos  # class balance of each attacker's own fold
        w = M * torch.where(yt.bool(), pos_weight[:, None], torch.ones_like(M))
        att = BatchedAttackers(M.shape[0], X.shape[1], tuple(cfg["hidden"]), cfg["dropout"])
        opt = torch.optim.Adam(att.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        att.train()
        target = yt.expand_as(M)
        for _ in range(cfg["epochs"]):
            bce = nn.functional.binary_cross_entropy_with_logits(att(xs), target, reduction="none")
            # per attacker: mean of its weighted training rows (as bce_balanced), summed over attackers
            loss = ((bce * w).sum(1) / cnt[:, 0]).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        att.eval()
        with torch.no_grad():
            return att(xs).double().numpy()


def _fold_bootstrap(y: np.ndarray, scores: list[np.ndarray], tests: list[np.ndarray], n_boot: int,
                    seed: int) -> np.ndarray:
    """Bootstrap distribution of the mean per-fold AUC, resampling members and non-members within each fold."""
    rng = np.random.default_rng(seed)
    total = np.zeros(n_boot)
    for s, te in zip(scores, tests):
        yt = y[te].astype(bool)
        sp, sn = s[yt], s[~yt]
        bp = sp[rng.integers(0, len(sp), size=(n_boot, len(sp)))]
        bn = sn[rng.integers(0, len(sn), size=(n_boot, len(sn)))]
        gt = (bp[:, :, None] > bn[:, None, :]).mean((1, 2))
        total += gt + 0.5 * (bp[:, :, None] == bn[:, None, :]).mean((1, 2))
    return total / len(scores)


def mia(feats: np.ndarray, y: np.ndarray, cfg: dict, seed: int, fit: Callable | None = None,
        groups=None) -> dict:
    """The paper's post-hoc attack on one model, scored without bias.

    Fresh attackers, one per fold and repeat (trained as one batched model unless a
    ``fit`` is given), each scoring only its held-out fold. The AUC is computed *per
    fold* and averaged: pooling scores of different attackers on one scale mixes their
    offsets and pulled the null below 0.5. ``groups`` (one label per cell) keeps each
    group within one fold: the audit passes neighbourhoods of forget cells with their
    matched negatives. CI: bootstrap of the mean per-fold AUC (members and non-members
    resampled within each fold). TPR at low FPR comes from the cells' mean out-of-fold
    score (pooled over attackers, so it is a conservative reading).
    """
    y = np.asarray(y).astype(int)
    folds = min(cfg["folds"], int(y.sum()), int((1 - y).sum()))
    if folds < 2:
        raise ValueError(f"need at least 2 positives and 2 negatives, got {int(y.sum())} / {int((1 - y).sum())}")
    splits = list(fold_splits(y, folds, cfg["repeats"], seed, groups))
    if fit is None:
        masks = np.zeros((len(splits), len(y)), dtype=bool)
        for i, (_, tr, _) in enumerate(splits):
            masks[i, tr] = True
        all_scores = fit_score_batched(feats, y, masks, cfg["attacker"], seed)
        fold_scores = [all_scores[i, te] for i, (_, _, te) in enumerate(splits)]
    else:
        fold_scores = [fit(feats[tr], y[tr], seed * 100_003 + i)(feats[te]) for i, (_, tr, te) in enumerate(splits)]
    keep = [i for i, (_, _, te) in enumerate(splits) if 0 < y[te].sum() < len(te)]
    fold_auc = np.array([auc_score(y[splits[i][2]], fold_scores[i]) for i in keep])
    reps = np.array([splits[i][0] for i in keep])
    per_repeat = np.array([fold_auc[reps == r].mean() for r in np.unique(reps)])
    boot = _fold_bootstrap(y, [fold_scores[i] for i in keep], [splits[i][2] for i in keep], cfg["bootstrap"], seed)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    pooled = np.full((cfg["repeats"], len(y)), np.nan)
    for (r, _, te), s in zip(splits, fold_scores):
        pooled[r, te] = s
    mean_scores = np.nanmean(pooled, 0)
    return {
        "auc": float(fold_auc.mean()),
        "auc_sd": float(per_repeat.std(ddof=1)) if len(per_repeat) > 1 else 0.0,
        "auc_per_repeat": per_repeat.tolist(),
        "auc_ci_low": float(lo),
        "auc_ci_high": float(hi),
        "tpr_at_1pct_fpr": tpr_at_fpr(y, mean_scores, 0.01),
        "tpr_at_5pct_fpr": tpr_at_fpr(y, mean_scores, 0.05),
        "folds": folds,
        "repeats": cfg["repeats"],
        "grouped_folds": groups is not None,
    }


