"""The cell kNN graph for clustering: exact neighbours and UMAP connectivities, without numba.

``scanpy.pp.neighbors`` builds the same graph through ``umap`` and ``pynndescent``,
whose numba functions are compiled in every new process (about 80 s of the demo's
preprocessing on 2 cores, more than everything else in the stage). Here the
neighbours come from an exact brute-force search (what scanpy itself uses below
8,192 cells; above that scanpy switches to approximate ``pynndescent`` neighbours)
and the fuzzy-simplicial-set weights are UMAP's ``smooth_knn_dist`` and
``compute_membership_strengths`` written with numpy, in UMAP's float32 arithmetic.
The result is stored where ``scanpy.tl.leiden`` looks for it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

SMOOTH_K_TOLERANCE = 1e-5  # umap.umap_.SMOOTH_K_TOLERANCE
MIN_K_DIST_SCALE = 1e-3    # umap.umap_.MIN_K_DIST_SCALE


def exact_knn(X: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and euclidean distances of each row's ``n_neighbors`` nearest rows, itself first."""
    from sklearn.neighbors import NearestNeighbors

    k = min(n_neighbors, X.shape[0])
    dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors(X)
    # the point itself first, as scanpy / umap expect (duplicates may tie with it)
    for i in np.flatnonzero(idx[:, 0] != np.arange(len(idx))):
        row = idx[i]
        j = np.flatnonzero(row == i)
        j = j[0] if len(j) else len(row) - 1
        idx[i, 1:j + 1], dist[i, 1:j + 1] = row[:j].copy(), dist[i, :j].copy()
        idx[i, 0] = i
    dist[:, 0] = 0.0  # brute-force distances of a point to itself are not always exactly 0
    return idx, dist


def smooth_knn_dist(dist: np.ndarray, k: float, n_iter: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(σ, ρ) per row: UMAP's binary search for Σ_j exp(-(d_j - ρ)/σ) = log2 k, local_connectivity 1."""
    d = dist.astype(np.float32)
    n = len(d)
    target = np.float32(np.log2(k))
    mask = d > 0
    has = mask.any(1)
    rho = np.where(has, d[np.arange(n), np.argmax(mask, 1)], np.float32(0)).astype(np.float32)
    lo = np.zeros(n, np.float32)
    hi = np.full(n, np.inf, np.float32)
    mid = np.ones(n, np.float32)
    active = np.ones(n, bool)
    diff = d[:, 1:] - rho[:, None]
    for _ in range(n_iter):
        if not active.any():
            break
        a = np.flatnonzero(active)
        dm = diff[a]
        terms = np.where(dm > 0, np.exp(-(dm / mid[a, None])), np.float32(1.0)).astype(np.float32)
        psum = np.zeros(len(a), np.float32)
        for j in range(terms.shape[1]):  # sequential float32 sum, as UMAP's loop
            psum += terms[:, j]
        done = np.abs(psum - target) < SMOOTH_K_TOLERANCE
        above = (psum > target) & ~done
        below = ~above & ~done
        ia, ib = a[above], a[below]
        hi[ia] = mid[ia]
        mid[ia] = (lo[ia] + hi[ia]) / np.float32(2)
        lo[ib] = mid[ib]
        unbounded = np.isinf(hi[ib])
        mid[ib] = np.where(unbounded, mid[ib] * np.float32(2), (lo[ib] + hi[ib]) / np.float32(2))
        active[a[done]] = False
    sigma = mid.copy()
    floor = np.where(rho > 0, MIN_K_DIST_SCALE * d.mean(1), MIN_K_DIST_SCALE * d.mean()).astype(np.float32)
    sigma = np.maximum(sigma, floor)
    return sigma, rho


def umap_connectivities(idx: np.ndarray, dist: np.ndarray, n_obs: int) -> sp.csr_matrix:
    """UMAP's fuzzy union graph (set_op_mix_ratio 1) from kNN indices and distances."""
    d = dist.astype(np.float32)
    sigma, rho = smooth_knn_dist(d, float(idx.shape[1]))
    excess = d - rho[:, None]
    with np.errstate(all="ignore"):  # self (0) and within-ρ entries overflow; they are set below
        vals = np.exp(-(excess / sigma[:, None])).astype(np.float32)
    vals[(excess <= 0) | (sigma[:, None] == 0)] = 1.0
    vals[idx == np.arange(len(idx))[:, None]] = 0.0
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    w = sp.coo_matrix((vals.ravel(), (rows, idx.ravel())), shape=(n_obs, n_obs))
    w.eliminate_zeros()
    wt = w.transpose()
    g = (w + wt - w.multiply(wt)).tocsr()
    g.eliminate_zeros()
    return g


def neighbors(adata, n_neighbors: int, n_pcs: int, use_rep: str = "X_pca") -> None:
    """Exact kNN on ``obsm[use_rep][:, :n_pcs]`` and UMAP connectivities, stored as scanpy stores them."""
    X = np.asarray(adata.obsm[use_rep][:, :n_pcs], dtype=np.float32)
    idx, dist = exact_knn(X, n_neighbors)
    n = adata.n_obs
    rows = np.repeat(np.arange(n), idx.shape[1] - 1)
    adata.obsp["distances"] = sp.csr_matrix((dist[:, 1:].ravel(), (rows, idx[:, 1:].ravel())), shape=(n, n))
    adata.obsp["connectivities"] = umap_connectivities(idx, dist, n)
    adata.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": {"n_neighbors": int(idx.shape[1]), "method": "umap", "metric": "euclidean",
                   "use_rep": use_rep, "n_pcs": int(n_pcs), "knn": "exact"},
    }
