"""The paper's MLP attack in the audit: fresh attackers per model, trained batched, scored per fold.

The features and the attackers (one, or many trained as one batched model) are in
:mod:`scunlearn.membership.attackers` (shared with the adversarial methods); this module trains the
k × repeats fold attackers of one audit as one batched model and scores them without bias
(:func:`mia`).
"""

from __future__ import annotations

import numpy as np

from scunlearn.membership.attackers import fold_splits, held_out_scores
from scunlearn.membership.metrics import auc_score, tpr_at_fpr


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


def mia(feats: np.ndarray, y: np.ndarray, cfg: dict, seed: int, groups=None, device=None) -> dict:
    """The paper's post-hoc attack on one model, scored without bias.

    Fresh attackers, one per fold and repeat (trained as one batched model), each scoring
    only its held-out fold. The AUC is computed *per
    fold* and averaged: pooling scores of different attackers on one scale mixes their
    offsets and pulled the null below 0.5. ``groups`` (one label per cell) keeps each
    group within one fold: the audit passes neighbourhoods of forget cells with their
    matched negatives. CI: bootstrap of the mean per-fold AUC (members and non-members
    resampled within each fold). TPR at low FPR comes from the cells' mean out-of-fold
    score (pooled over attackers, so it is a conservative reading). The attackers train on
    ``device`` (default the CPU); the scores, AUCs and bootstrap are computed on the CPU.
    """
    y = np.asarray(y).astype(int)
    folds = min(cfg["folds"], int(y.sum()), int((1 - y).sum()))
    if folds < 2:
        raise ValueError(f"need at least 2 positives and 2 negatives, got {int(y.sum())} / {int((1 - y).sum())}")
    splits = list(fold_splits(y, folds, cfg["repeats"], seed, groups))
    fold_scores = held_out_scores(feats, y, splits, cfg["attacker"], seed, device)
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


