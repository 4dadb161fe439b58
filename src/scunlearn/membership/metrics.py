"""Attack metrics: AUC (Mann–Whitney), stratified bootstrap CI, TPR at a fixed FPR."""

from __future__ import annotations

import numpy as np


def average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of ``s``, ties given their mean rank: SciPy's ``rankdata(s)``, without the ~0.5 s
    import of ``scipy.stats`` in every job that scores an AUC."""
    s = np.asarray(s, dtype=float).ravel()
    order = np.argsort(s, kind="mergesort")
    v = s[order]
    first = np.r_[True, v[1:] != v[:-1]]
    group = np.cumsum(first)
    bounds = np.r_[np.flatnonzero(first), len(s)]
    ranks = np.empty(len(s))
    ranks[order] = 0.5 * (bounds[group] + bounds[group - 1] + 1)
    return ranks


def auc_score(y, scores) -> float:
    """ROC AUC via the Mann–Whitney U statistic (ties count one half); NaN if a score is NaN."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positives and negatives")
    if np.isnan(s).any():
        return float("nan")
    ranks = average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auc_ci(y, scores, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the AUC, resampling positives and negatives separately (stratified)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(seed)
    bp = pos[rng.integers(0, len(pos), size=(n_boot, len(pos)))]
    bn = neg[rng.integers(0, len(neg), size=(n_boot, len(neg)))]
    # vectorised Mann–Whitney per bootstrap sample: P(pos > neg) + ½ P(pos = neg)
    gt = (bp[:, :, None] > bn[:, None, :]).mean(axis=(1, 2))
    eq = (bp[:, :, None] == bn[:, None, :]).mean(axis=(1, 2))
    aucs = gt + 0.5 * eq
    a = (1 - level) / 2
    lo, hi = np.quantile(aucs, [a, 1 - a])
    return float(lo), float(hi)


def tpr_at_fpr(y, scores, fpr: float) -> float:
    """Highest true-positive rate reachable with false-positive rate <= ``fpr``."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=float)
    neg = np.sort(s[~y])[::-1]
    k = int(np.floor(fpr * len(neg)))  # negatives allowed above the threshold
    thr = neg[k] if k < len(neg) else -np.inf  # strictly above the (k+1)-th highest negative
    return float((s[y] > thr).mean())
