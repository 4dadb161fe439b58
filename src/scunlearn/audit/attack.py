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

    def _sigma(self, i: int) -> torch.Tensor:
        """Layer i's spectral norms (B,), by one power iteration when training (differentiable in W)."""
        W, u = self.weights[i], getattr(self, f"u{i}")
        if self.training:
            with torch.no_grad():
                v = nn.functional.normalize(torch.bmm(W.transpose(1, 2), u[:, :, None])[..., 0], dim=1)
                u.copy_(nn.functional.normalize(torch.bmm(W, v[:, :, None])[..., 0], dim=1))
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

    The same values and gradients as the two ops; the keep draw is ``uniform >= p`` (one float
    per entry, about 3x cheaper on CPU than ``bernoulli_``, which was the attack's largest cost).
    """
    with torch.no_grad():
        scale = 1.0 / (1.0 - p) if p < 1 else 0.0  # p = 1 drops everything, as nn.functional.dropout
        mask = torch.rand(h.shape, dtype=h.dtype, device=h.device).ge_(p).mul_(h > 0).mul_(scale)
    return h * mask


def _adam_step(params: list[torch.Tensor], state: list[tuple[torch.Tensor, torch.Tensor]], step: int, lr: float,
               weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """One step of ``torch.optim.Adam`` (L2 weight decay, no amsgrad), op for op as its CPU implementation.

    Written out because the first ``torch.optim`` step imports ``torch._dynamo`` (about 1 s of
    CPU per audit process) for a wrapper the attack does not need; the update is the same.
    """
    beta1, beta2 = betas
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    with torch.no_grad():
        for param, (exp_avg, exp_avg_sq) in zip(params, state):
            grad = param.grad
            if weight_decay != 0:
                grad = grad.add(param, alpha=weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))


def fit_score_batched(feats: np.ndarray, y: np.ndarray, masks: np.ndarray, cfg: dict, seed: int) -> np.ndarray:
    """Train one attacker per row of ``masks`` (its training rows) and score every cell: (B, n).

    Each attacker's forward and backward pass runs over its own training rows only (padded
    to the largest fold with zero weight), not over all cells with the held-out ones
    weighted zero: the same loss, about a fifth less work.
    """
    masks = np.asarray(masks, dtype=bool)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        X = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
        yt = torch.as_tensor(np.asarray(y), dtype=torch.float32)
        M = torch.as_tensor(masks, dtype=torch.float32)  # (B, n)
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
        rows_t = torch.as_tensor(rows)
        xt = torch.gather(xs, 1, rows_t[:, :, None].expand(-1, -1, xs.shape[2]))  # (B, width, d)
        target = yt[rows_t]
        n_pos = (M * yt).sum(1).clamp_min(1.0)
        pos_weight = (cnt[:, 0] - n_pos) / n_pos  # class balance of each attacker's own fold
        w = torch.as_tensor(valid, dtype=torch.float32) * torch.where(target.bool(), pos_weight[:, None], 1.0)
        att = BatchedAttackers(M.shape[0], X.shape[1], tuple(cfg["hidden"]), cfg["dropout"])
        params = list(att.parameters())
        state = [(torch.zeros_like(q), torch.zeros_like(q)) for q in params]
        att.train()
        for step in range(1, cfg["epochs"] + 1):
            bce = nn.functional.binary_cross_entropy_with_logits(att(xt), target, reduction="none")
            # per attacker: mean of its weighted training rows (as bce_balanced), summed over attackers
            loss = ((bce * w).sum(1) / cnt[:, 0]).sum()
            for q in params:
                q.grad = None
            loss.backward()
            _adam_step(params, state, step, cfg["lr"], cfg["weight_decay"])
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


