"""Matched negatives: audit cells nearest to the forget cells in a representation blind to membership.

The workflow matches in the preprocessed PCA, which no model trained: matching in a
baseline's latent μ would pick negatives by a representation that saw the forget cells.
The union of each forget cell's k nearest audit cells (paper k = 7). A tight rare
cluster collapses those neighbourhoods onto a few audit cells, so k grows until the
union holds at least ``min_matched`` cells (default 5 × the forget-set size); the k
used is recorded.
"""

from __future__ import annotations

import logging

import numpy as np

from scunlearn import ScunlearnError

log = logging.getLogger(__name__)


def nearest_rows(query: np.ndarray, ref: np.ndarray, k: int | None = None,
                 chunk_elements: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of the ``k`` (default: all) rows of ``ref`` nearest each row of ``query``, nearest first.

    Exact Euclidean distances by brute force in float64, the differences taken row by row
    (no |a|² + |b|² − 2ab cancellation), in chunks of query rows; ties go to the lower index.
    scikit-learn's ``NearestNeighbors`` gives the same neighbours, but importing it costs
    ~1 s in every unlearning job, which matches only a few hundred cells.
    """
    q = np.asarray(query, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ValueError(f"nearest_rows: query {q.shape} and reference {r.shape} need the same number of columns")
    k = len(r) if k is None else min(int(k), len(r))
    rows = max(1, chunk_elements // max(1, r.size))
    dist = np.empty((len(q), k))
    ind = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), rows):
        d2 = ((q[s:s + rows, None, :] - r[None, :, :]) ** 2).sum(-1)
        order = np.argsort(d2, axis=1, kind="stable")[:, :k]
        ind[s:s + rows] = order
        dist[s:s + rows] = np.sqrt(np.take_along_axis(d2, order, axis=1))
    return dist, ind


def matched_negatives(mu_forget: np.ndarray, mu_audit: np.ndarray, audit_barcodes, k: int,
                      min_matched: int | None = None, forget_barcodes=None) -> dict:
    """Union of k-NN audit cells of every forget cell, k grown until the union reaches ``min_matched``.

    Each chosen cell also records its nearest forget cell (``nearest_forget``), the
    group the audit keeps it in when splitting folds.
    """
    if forget_barcodes is None:
        forget_barcodes = np.arange(len(mu_forget)).astype(str)
    audit_barcodes = np.asarray(audit_barcodes)
    n_f, n_a = len(mu_forget), len(mu_audit)
    min_matched = 5 * n_f if min_matched is None else int(min_matched)
    if min_matched > n_a:
        raise ScunlearnError(
            f"matched negatives: min_matched={min_matched} but the audit pool has only {n_a} cells; "
            "enlarge the audit split (splits.validation_fraction / train_fraction) or lower matched.min_matched")
    dist, ind = nearest_rows(mu_forget, mu_audit)  # every audit cell, nearest first
    k_used = int(k)
    while True:
        chosen = np.unique(ind[:, :k_used])
        if len(chosen) >= min_matched or k_used >= n_a:
            break
        k_used += 1
    if len(chosen) < min_matched:  # pragma: no cover - impossible once min_matched <= n_a
        raise ScunlearnError(f"matched negatives: only {len(chosen)} distinct cells, {min_matched} needed")
    # each chosen cell's distance to its nearest forget cell
    dmin = np.full(n_a, np.inf)
    np.minimum.at(dmin, ind[:, :k_used].ravel(), dist[:, :k_used].ravel())
    # the forget cell each negative is closest to: the audit groups a negative with it, so that
    # out-of-fold scoring never trains on a cell's matched neighbours while scoring the cell
    nearest = nearest_rows(mu_audit[chosen], mu_forget, k=1)[1][:, 0]
    if k_used != k:
        log.info("matched negatives: k=%d gave %d distinct cells (< %d); grew k to %d",
                 k, len(np.unique(ind[:, :k])), min_matched, k_used)
    return {
        "k_requested": int(k),
        "k_used": k_used,
        "min_matched": min_matched,
        "size": int(len(chosen)),
        "barcodes": audit_barcodes[chosen].tolist(),
        "distances": dmin[chosen].tolist(),
        "nearest_forget": np.asarray(forget_barcodes)[nearest].tolist(),
    }


def neighbourhood_groups(pca_forget: np.ndarray, nearest_forget_idx: np.ndarray, n_groups: int,
                         seed: int = 0) -> np.ndarray:
    """Fold groups for the MLP attack: forget cells clustered into ``n_groups`` neighbourhoods.

    Nearby forget cells share a group (k-means in the matching representation) and each
    matched negative joins the group of its nearest forget cell, so that no attacker
    trains on a neighbourhood it is then scored on. Returns labels for the forget cells
    followed by the negatives.
    """
    from sklearn.cluster import KMeans

    n_groups = max(1, min(int(n_groups), len(pca_forget)))
    km = KMeans(n_clusters=n_groups, n_init=4, random_state=seed).fit(pca_forget)
    lab = km.labels_
    return np.r_[lab, lab[np.asarray(nearest_forget_idx, dtype=int)]]


def fold_groups_record(pca_forget: np.ndarray, forget_barcodes, nearest_forget, n_groups: int, seed: int) -> dict:
    """The matched JSON's ``fold_groups``: :func:`neighbourhood_groups` with what made them (n, seed)."""
    fpos = {b: i for i, b in enumerate(forget_barcodes)}
    labels = neighbourhood_groups(pca_forget, [fpos[b] for b in nearest_forget], n_groups, seed)
    return {"n_groups": int(n_groups), "seed": int(seed), "labels": labels.astype(int).tolist()}


def matched_fold_groups(rec: dict, path, adata, forget_idx: np.ndarray, n_groups: int, seed: int) -> np.ndarray:
    """The MLP attack's fold groups (forget cells, then matched negatives) from the matched JSON.

    The matched stage clusters them once per forget set, so that audit jobs need no
    k-means (nor scikit-learn's ~1.5 s import). A file written before that, or for other
    settings, gets them computed here, identically.
    """
    fg = rec.get("fold_groups") or {}
    n_cells = len(forget_idx) + len(rec["barcodes"])
    if fg.get("n_groups") == int(n_groups) and fg.get("seed") == int(seed) and len(fg.get("labels", ())) == n_cells:
        return np.asarray(fg["labels"], dtype=int)
    log.info("%s: no fold groups for n_groups=%d, seed=%d: clustering the forget cells here", path, n_groups, seed)
    return np.asarray(fold_groups_record(np.asarray(adata.obsm["X_pca"])[forget_idx], adata.obs_names[forget_idx],
                                         rec["nearest_forget"], n_groups, seed)["labels"], dtype=int)


def read_matched(path, adata, audit_idx) -> tuple[dict, np.ndarray, np.ndarray]:
    """The matched-negatives JSON, checked against the data: (record, negative rows, nearest forget barcodes)."""
    from scunlearn.data.splits import check_barcodes
    from scunlearn.io import read_json

    rec = read_json(path)
    check_barcodes(rec["barcodes"], adata.obs_names[audit_idx], path, "matched (audit)")
    return rec, adata.obs_names.get_indexer(rec["barcodes"]), np.asarray(rec["nearest_forget"])
