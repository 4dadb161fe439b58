"""Our stratified (group) k-fold assignment against scikit-learn's splitters, index for index."""

import numpy as np
import pytest

from scunlearn.data.folds import (
    repeated_stratified_test_folds,
    splits_from_folds,
    stratified_group_test_folds,
    stratified_test_folds,
)
from scunlearn.membership.attackers import fold_splits

sk = pytest.importorskip("sklearn.model_selection")


def _cases():
    rng = np.random.default_rng(0)
    for i in range(25):
        n = int(rng.integers(20, 200))
        k = int(rng.integers(2, 6))
        n_cls = int(rng.integers(2, 5))
        y = rng.choice(n_cls, size=n, p=rng.dirichlet(np.ones(n_cls) * 3))
        y[:k * n_cls] = np.repeat(np.arange(n_cls), k)  # every class can fill every fold
        rng.shuffle(y)
        if i % 3 == 0:  # string labels, first-seen order differs from sorted order
            y = np.array(["b", "a", "c", "d"])[y]
        groups = rng.integers(0, int(rng.integers(k, 3 * k + 5)), size=n)
        groups[:k] = np.arange(k)  # at least k groups
        yield y, groups, k, int(rng.integers(0, 1000))


@pytest.mark.parametrize("y,groups,k,seed", list(_cases()))
def test_same_folds_as_sklearn(y, groups, k, seed):
    ref = list(sk.StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    ours = stratified_test_folds(y, k, np.random.RandomState(seed))
    for f, (_, te) in enumerate(ref):
        np.testing.assert_array_equal(np.flatnonzero(ours == f), te)

    ref = list(sk.StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups))
    ours = stratified_group_test_folds(y, groups, k, seed)
    for f, (_, te) in enumerate(ref):
        np.testing.assert_array_equal(np.flatnonzero(ours == f), te)
    # whole groups in one fold
    for g in np.unique(groups):
        assert len(np.unique(ours[groups == g])) == 1

    ref = list(sk.RepeatedStratifiedKFold(n_splits=k, n_repeats=3, random_state=seed).split(np.zeros(len(y)), y))
    ours = list(splits_from_folds(repeated_stratified_test_folds(y, k, 3, seed), k))
    assert len(ours) == len(ref) == 3 * k
    for i, ((r, tr, te), (rtr, rte)) in enumerate(zip(ours, ref)):
        assert r == i // k
        np.testing.assert_array_equal(tr, rtr)
        np.testing.assert_array_equal(te, rte)


def test_fold_splits_grouped_repeats_use_seed_plus_repeat():
    y, groups, k, seed = next(_cases())
    got = list(fold_splits(y, k, 2, seed, groups))
    for r in range(2):
        ref = list(sk.StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + r).split(y, y, groups))
        for (rr, tr, te), (rtr, rte) in zip(got[r * k:(r + 1) * k], ref):
            assert rr == r
            np.testing.assert_array_equal(tr, rtr)
            np.testing.assert_array_equal(te, rte)


def test_bad_fold_counts_are_named():
    with pytest.raises(ValueError, match="n_splits=5 cannot be greater than the number of members"):
        stratified_test_folds(np.array([0, 0, 1, 1]), 5, np.random.RandomState(0))
    with pytest.raises(ValueError, match="number of groups: 2"):
        stratified_group_test_folds(np.array([0, 1, 0, 1, 0, 1]), np.array([0, 0, 0, 1, 1, 1]), 3, 0)
    with pytest.raises(ValueError, match="6 labels but 5 group labels"):
        stratified_group_test_folds(np.zeros(6), np.zeros(5), 2, 0)


@pytest.mark.parametrize("n_cls,d,seed", [(2, 3, 0), (2, 10, 1), (4, 10, 2), (7, 32, 3)])
def test_logistic_regression_matches_sklearn(n_cls, d, seed):
    """fit_logistic minimises scikit-learn's LogisticRegression objective: its optimum (a tight-tolerance
    sklearn fit) to 1e-4, and nearly all predictions of a default-tolerance sklearn fit."""
    from sklearn.linear_model import LogisticRegression

    from scunlearn.audit.utility import fit_logistic, predict_logistic

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (n_cls, d))
    y = rng.integers(0, n_cls, 400)
    X = centres[y] + rng.normal(size=(400, d))
    labels = np.array([f"type{c}" for c in range(n_cls)])[y]
    opt = LogisticRegression(max_iter=10_000, tol=1e-10).fit(X[:300], labels[:300])
    ref = LogisticRegression(max_iter=2000).fit(X[:300], labels[:300])
    classes, W, b = fit = fit_logistic(X[:300], labels[:300])
    np.testing.assert_array_equal(classes, ref.classes_)
    np.testing.assert_allclose(W, opt.coef_, atol=1e-4)
    np.testing.assert_allclose(b, opt.intercept_, atol=1e-4)
    pred = predict_logistic(fit, X[300:])
    assert (pred == ref.predict(X[300:])).mean() >= 0.99
    assert (pred == labels[300:]).mean() > 1.0 / n_cls + 0.1  # it learned something


def test_latent_accuracy_matches_sklearn_pipeline():
    """The latent-accuracy utility equals scikit-learn's scaled-LR cross_val_score on the same folds."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from scunlearn.audit import utility
    from scunlearn.vae.model import VAEConfig, build_vae

    torch.manual_seed(0)
    model = build_vae(VAEConfig(n_genes=30, hidden=[16], latent=4, dropout=0.0)).eval()
    rng = np.random.default_rng(0)
    labels = rng.choice(["a", "b", "c", "rare"], size=240, p=[0.4, 0.3, 0.28, 0.02])
    shift = {"a": 0, "b": 3, "c": 6, "rare": 9}
    X = torch.as_tensor(rng.poisson(2.0 + np.array([shift[c] for c in labels])[:, None] * (np.arange(30) < 10),
                                    size=(240, 30)), dtype=torch.float32)
    idx = np.arange(240)
    got = utility.latent_accuracy(model, X, idx, labels, folds=5, seed=3)
    mu = utility.cell_terms(model, X, idx).mu.double().numpy()
    keep = np.isin(labels, [c for c, n in zip(*np.unique(labels, return_counts=True)) if n >= 5])
    cv = sk.StratifiedKFold(n_splits=5, shuffle=True, random_state=3)
    ref = sk.cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), mu[keep],
                             labels[keep], cv=cv).mean()
    assert got == pytest.approx(ref, abs=1.5 / keep.sum())
    assert 0.5 < got <= 1.0


def test_latent_accuracy_of_a_diverged_model_is_nan_not_a_guess():
    """A NaN / infinite latent mean gives latent_acc NaN (a fit on NaN would predict one class: a
    believable accuracy), and the regression refuses non-finite features by name."""
    import torch

    from scunlearn.audit import utility
    from scunlearn.vae.model import VAEConfig, build_vae

    model = build_vae(VAEConfig(n_genes=10, hidden=[8], latent=2)).eval()
    with torch.no_grad():
        model.mu.bias[0] = float("nan")
    X = torch.poisson(torch.rand(60, 10) * 3)
    labels = np.repeat(["a", "b", "c"], 20)
    assert np.isnan(utility.latent_accuracy(model, X, np.arange(60), labels, folds=3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        utility.fit_logistic(np.array([[0.0], [np.inf], [1.0], [2.0]]), np.array([0, 0, 1, 1]))
