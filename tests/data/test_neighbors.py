"""The numba-free kNN graph: exact neighbours and UMAP's fuzzy-union weights."""

import numpy as np

from scunlearn.data.neighbors import exact_knn, smooth_knn_dist, umap_connectivities


def _points(n=200, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(0, 1, (n // 2, d)), rng.normal(4, 1, (n - n // 2, d))].astype(np.float32)


def test_exact_knn_self_first_and_sorted():
    X = _points()
    X[1] = X[0]  # a duplicate: tied with itself at distance 0
    idx, dist = exact_knn(X, 10)
    assert (idx[:, 0] == np.arange(len(X))).all() and (dist[:, 0] == 0).all()
    assert (np.diff(dist, axis=1) >= 0).all()
    brute = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    np.testing.assert_allclose(np.sort(brute, 1)[:, :10], dist, atol=1e-4)


def test_smooth_knn_dist_hits_log2_k():
    idx, dist = exact_knn(_points(), 15)
    sigma, rho = smooth_knn_dist(dist, 15.0)
    np.testing.assert_array_equal(rho, dist[:, 1])  # the nearest other point
    psum = np.where(dist[:, 1:] - rho[:, None] > 0, np.exp(-(dist[:, 1:] - rho[:, None]) / sigma[:, None]), 1.0).sum(1)
    np.testing.assert_allclose(psum, np.log2(15), atol=1e-3)


def test_umap_connectivities_fuzzy_union():
    idx, dist = exact_knn(_points(), 15)
    g = umap_connectivities(idx, dist, len(idx)).toarray()
    assert np.allclose(g, g.T) and g.min() >= 0 and g.max() <= 1
    assert (np.diag(g) == 0).all()
    # the nearest neighbour is within ρ: membership 1 in its row, so 1 after the union
    assert np.allclose(g[np.arange(len(g)), idx[:, 1]], 1.0)
    # no edges across the two well-separated blobs
    assert g[:100, 100:].sum() == 0
