"""Stratified (group) k-fold assignment, ours: the same folds as scikit-learn 1.9's splitters, without it.

The audit's fold attackers and the latent-accuracy utility need seeded stratified folds.
scikit-learn's splitters cost ~1.5 s of import in every audit job (a third of its start-up)
and their assignment has changed between releases (``StratifiedGroupKFold``'s shuffle was
fixed after 1.3, which ``pyproject`` still allows), so a study's folds depended on the
installed version. These functions reproduce the assignment of scikit-learn 1.9's
``StratifiedKFold(shuffle=True)``, ``RepeatedStratifiedKFold`` and
``StratifiedGroupKFold(shuffle=True)`` index for index (the tests compare them), and keep it
whatever scikit-learn is installed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def _check_classes(counts: np.ndarray, n_splits: int) -> None:
    if n_splits < 2:
        raise ValueError(f"k-fold needs at least 2 folds, got {n_splits}")
    if np.all(n_splits > counts):
        raise ValueError(f"n_splits={n_splits} cannot be greater than the number of members in each class")


def stratified_test_folds(y, n_splits: int, rng: np.random.RandomState) -> np.ndarray:
    """Test-fold id (0..n_splits-1) of every sample, stratified by class and shuffled by ``rng``.

    scikit-learn's ``StratifiedKFold._make_test_folds`` with ``shuffle=True``: classes in
    order of first appearance, each class's fold sizes from a round robin over the sorted
    labels, the class's fold ids then shuffled (one ``rng.shuffle`` per class, in that order).
    """
    y = np.asarray(y)
    _, first, inv = np.unique(y, return_index=True, return_inverse=True)
    _, class_perm = np.unique(first, return_inverse=True)
    enc = class_perm[inv.reshape(-1)]
    n_classes = len(first)
    _check_classes(np.bincount(enc), n_splits)
    order = np.sort(enc)
    allocation = np.asarray([np.bincount(order[i::n_splits], minlength=n_classes) for i in range(n_splits)])
    test_folds = np.empty(len(y), dtype=np.int64)
    for k in range(n_classes):
        fold_ids = np.arange(n_splits).repeat(allocation[:, k])
        rng.shuffle(fold_ids)
        test_folds[enc == k] = fold_ids
    return test_folds


def _best_fold(counts_per_fold: np.ndarray, class_counts: np.ndarray, group_counts: np.ndarray) -> int:
    """The fold whose class shares stay most even with this group added (ties: the smaller fold)."""
    best, best_eval, best_size = 0, np.inf, np.inf
    for i in range(len(counts_per_fold)):
        counts_per_fold[i] += group_counts
        spread = np.std(counts_per_fold / class_counts.reshape(1, -1), axis=0)
        counts_per_fold[i] -= group_counts
        ev, size = np.mean(spread), np.sum(counts_per_fold[i])
        if ev < best_eval or (np.isclose(ev, best_eval) and size < best_size):
            best, best_eval, best_size = i, ev, size
    return best


def stratified_group_test_folds(y, groups, n_splits: int, seed: int) -> np.ndarray:
    """Test-fold id of every sample: whole groups per fold, class shares as even as the groups allow.

    scikit-learn 1.9's ``StratifiedGroupKFold(shuffle=True, random_state=seed)``: groups in
    a seeded random order, then stably by decreasing spread of their class counts, each
    placed in the fold that keeps the classes' per-fold shares most even.
    """
    y, groups = np.asarray(y), np.asarray(groups)
    if len(y) != len(groups):
        raise ValueError(f"{len(y)} labels but {len(groups)} group labels")
    rng = np.random.RandomState(seed)
    _, y_inv, y_cnt = np.unique(y, return_inverse=True, return_counts=True)
    _check_classes(y_cnt, n_splits)
    _, g_inv, g_cnt = np.unique(groups, return_inverse=True, return_counts=True)
    y_inv, g_inv = y_inv.reshape(-1), g_inv.reshape(-1)
    if n_splits > len(g_cnt):
        raise ValueError(f"n_splits={n_splits} cannot be greater than the number of groups: {len(g_cnt)}")
    per_group = np.zeros((len(g_cnt), len(y_cnt)))
    np.add.at(per_group, (g_inv, y_inv), 1)
    perm = np.arange(len(g_cnt))
    rng.shuffle(perm)
    per_group = per_group[perm]
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(perm.size)
    g_inv = inv_perm[g_inv]
    per_fold = np.zeros((n_splits, len(y_cnt)))
    fold_of_group = np.empty(len(g_cnt), dtype=np.int64)
    for g in np.argsort(-np.std(per_group, axis=1), kind="stable"):
        f = _best_fold(per_fold, y_cnt, per_group[g])
        per_fold[f] += per_group[g]
        fold_of_group[g] = f
    return fold_of_group[g_inv]


def repeated_stratified_test_folds(y, n_splits: int, repeats: int, seed: int, groups=None) -> np.ndarray:
    """(repeats, n) test-fold ids: scikit-learn's ``RepeatedStratifiedKFold(random_state=seed)`` folds,
    or with ``groups`` one ``StratifiedGroupKFold(shuffle=True, random_state=seed + r)`` per repeat r."""
    if groups is not None:
        return np.stack([stratified_group_test_folds(y, groups, n_splits, seed + r) for r in range(repeats)])
    rng = np.random.RandomState(seed)  # one stream across repeats, as RepeatedStratifiedKFold passes it on
    return np.stack([stratified_test_folds(y, n_splits, rng) for _ in range(repeats)])


def splits_from_folds(test_folds: np.ndarray, n_splits: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(repeat, train, test) sorted index triples of (repeats, n) test-fold ids, repeat by repeat, fold by fold."""
    test_folds = np.atleast_2d(test_folds)
    idx = np.arange(test_folds.shape[1])
    for r, row in enumerate(test_folds):
        for f in range(n_splits):
            mask = row == f
            yield r, idx[~mask], idx[mask]
