"""Preprocessing as the paper describes it, with the reference code's HVG bug fixed.

QC (min genes per cell, MT fraction), raw counts kept in ``layers['counts']``,
library-size normalisation + log1p in ``X``, ``seurat_v3`` highly-variable genes
computed **on the raw counts**, PCA / neighbours / Leiden, and clusters annotated
with a marker table so the rare cluster is found by biology, not by a cluster number —
or, with ``preprocess.cell_type_key``, the data's own ``obs`` labels as the study's cell types
(the marker labels then computed beside them when the table fits the data).
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scunlearn import ScunlearnError
from scunlearn.data.labels import MIN_MARKER_SCORE, SCORE_COLUMNS, SCORES_KEY, UNKNOWN, WEAK_MARGIN, scores_record
from scunlearn.data.neighbors import neighbors

log = logging.getLogger(__name__)

#: ``adata.uns`` key saying whose labels ``obs['cell_type']`` holds: :data:`FROM_MARKERS`, or ``obs['<key>']``
#: for the data's own (``preprocess.cell_type_key``); the forget-set stage reads it (scunlearn.data.splits)
CELL_TYPE_SOURCE = "cell_type_source"
FROM_MARKERS = "markers"
#: with the data's own labels: the marker labels beside them (obs column), and their per-cluster scores (uns key;
#: not ``uns['cell_type_scores']``, which describes the study's ``cell_type`` labels)
MARKER_LABELS = "marker_cell_type"
MARKER_SCORES_KEY = "marker_cell_type_scores"
#: obs columns named in an error, at most
_SHOWN = 30


def quality_control(adata: ad.AnnData, min_genes: int, max_mt_fraction: float, min_cells_per_gene: int) -> ad.AnnData:
    """Drop cells with fewer than ``min_genes`` genes or MT fraction >= ``max_mt_fraction``."""
    import scanpy as sc

    adata = adata.copy()
    adata.var["mt"] = adata.var_names.str.upper().str.startswith("MT-")
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    keep = (adata.obs["n_genes_by_counts"] >= min_genes) & (adata.obs["pct_counts_mt"] < 100 * max_mt_fraction)
    log.info("QC: %d cells -> %d (min_genes=%d, MT < %.0f%%; MT genes found: %d)",
             adata.n_obs, int(keep.sum()), min_genes, 100 * max_mt_fraction, int(adata.var["mt"].sum()))
    adata = adata[keep.values].copy()
    if adata.n_obs == 0:
        raise ScunlearnError("QC removed every cell; check preprocess.min_genes / max_mt_fraction")
    sc.pp.filter_genes(adata, min_cells=min_cells_per_gene)
    return adata


def select_hvgs(adata: ad.AnnData, n_top: int) -> np.ndarray:
    """Boolean mask of ``n_top`` seurat_v3 HVGs computed on ``layers['counts']`` (raw counts)."""
    import scanpy as sc

    if "counts" not in adata.layers:
        raise ScunlearnError("select_hvgs needs raw counts in adata.layers['counts']")
    n_top = min(n_top, adata.n_vars)
    df = sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor="seurat_v3", layer="counts", inplace=False)
    return df["highly_variable"].to_numpy()


def marker_scores(adata: ad.AnnData, markers: pd.DataFrame, cluster_key: str = "leiden") -> pd.DataFrame:
    """Clusters x cell types: the mean over the type's markers of per-gene z-scored log expression, averaged
    over the cluster's cells. Types with no marker in the data are skipped."""
    present = markers[markers["gene"].isin(adata.var_names)]
    if present.empty:
        raise ScunlearnError("none of the marker genes is in the data; check preprocess.markers")
    genes = present["gene"].unique().tolist()  # a list: pandas 3's unique() of strings is no ndarray for anndata
    X = adata[:, genes].X
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    Z = (X - X.mean(0)) / (X.std(0) + 1e-8)
    zdf = pd.DataFrame(Z, columns=genes, index=adata.obs_names)
    type_scores = pd.DataFrame({t: zdf[g["gene"].tolist()].mean(axis=1) for t, g in present.groupby("cell_type")})
    return type_scores.groupby(adata.obs[cluster_key].values, observed=True).mean()


def score_clusters(adata: ad.AnnData, markers: pd.DataFrame, cluster_key: str = "leiden",
                   min_score: float = MIN_MARKER_SCORE) -> pd.DataFrame:
    """One row per cluster (:data:`SCORE_COLUMNS`): its best and runner-up types and scores and the label given.

    A cluster whose best score is below ``min_score`` (``preprocess.min_marker_score``) expresses no type's
    markers convincingly and is labelled ``unknown``, never given a type; one whose best type leads the
    runner-up by less than :data:`WEAK_MARGIN` keeps its label but is flagged ``weak``. Both are logged.
    """
    by_cluster = marker_scores(adata, markers, cluster_key)
    sizes = adata.obs[cluster_key].value_counts()
    rows = []
    for c, s in by_cluster.iterrows():
        best = s.idxmax()
        rest = s.drop(best)
        runner = rest.idxmax() if len(rest) else ""
        score, r_score = float(s[best]), float(rest[runner]) if len(rest) else float("nan")
        best = str(best)
        n = int(sizes.get(c, 0))
        label = UNKNOWN if score < min_score else best
        weak = label != UNKNOWN and score - r_score < WEAK_MARGIN  # NaN runner-up: never weak
        if label == UNKNOWN:
            log.warning("cluster %s (%d cells) -> %s: best marker score %.2f (%s) is below "
                        "preprocess.min_marker_score = %.2f", c, n, UNKNOWN, score, best, min_score)
        elif weak:
            log.warning("cluster %s (%d cells) -> %s, weakly: score %.2f leads the runner-up %s (%.2f) by less "
                        "than %.2f; its cells may be either type", c, n, best, score, runner, r_score, WEAK_MARGIN)
        else:
            log.info("cluster %s (%d cells) -> %s (score %.2f; runner-up %s %.2f)", c, n, best, score, runner, r_score)
        rows.append((str(c), n, best, score, str(runner), r_score, label, bool(weak)))
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def annotate_clusters(adata: ad.AnnData, markers: pd.DataFrame, cluster_key: str = "leiden",
                      min_score: float = MIN_MARKER_SCORE) -> pd.Series:
    """Label each cluster with the marker-table cell type whose markers score highest there, or ``unknown``
    below ``min_score`` (:func:`score_clusters`); a categorical per cell."""
    table = score_clusters(adata, markers, cluster_key, min_score)
    return _labels(adata, table, cluster_key)


def _labels(adata: ad.AnnData, table: pd.DataFrame, cluster_key: str) -> pd.Series:
    """Each cell's cluster label from a :func:`score_clusters` table, as a categorical (mapped on the cluster
    column itself, so the categories come in the order they always did)."""
    clusters = adata.obs[cluster_key]
    label = dict(zip(table["cluster"], table["label"]))
    return clusters.map({c: label[str(c)] for c in pd.unique(clusters)}).astype("category")


def own_labels(adata: ad.AnnData, key: str, source: str = "the data") -> pd.Series:
    """The data's own cell-type labels ``obs[key]`` (``preprocess.cell_type_key``) as strings, a missing label as
    ``unknown``; a missing column is refused naming the key, ``source`` (the file) and the columns it has.

    The user's labels are their ground truth: unlike marker labels they are taken as they are, unscored.
    """
    if key not in adata.obs.columns:
        cols = [str(c) for c in adata.obs.columns]
        shown = ", ".join(repr(c) for c in cols[:_SHOWN]) + (", ..." if len(cols) > _SHOWN else "")
        raise ScunlearnError(
            f"preprocess.cell_type_key '{key}': {source} has no obs column '{key}'; its {len(cols)} obs columns: "
            f"[{shown}]. Name the column holding the cells' types, or set preprocess.cell_type_key: null to label "
            "the clusters with preprocess.markers")
    col = adata.obs[key]
    missing = col.isna().to_numpy()
    labels = np.where(missing, UNKNOWN, col.astype(object).astype(str).to_numpy()).astype(object)
    if missing.any():
        log.warning("obs['%s']: %d of %d cells have no label; they are labelled '%s'", key, int(missing.sum()),
                    len(col), UNKNOWN)
    return pd.Series(labels, index=adata.obs_names, name=key, dtype=object)


def _as_category(values: pd.Series) -> pd.Series:
    """Strings as a categorical of plain object strings (sorted categories), which h5ad stores under any pandas."""
    cats = pd.Index(sorted(set(values)), dtype=object)
    return pd.Series(pd.Categorical(values.to_numpy(dtype=object), categories=cats), index=values.index)


def preprocess(adata: ad.AnnData, cfg: dict, markers: pd.DataFrame, seed: int, source: str = "the data"
               ) -> ad.AnnData:
    """Run the whole preprocessing (README, "The PBMC-33k study") and return the HVG-subset AnnData.

    Returns ``X`` = log1p(normalised), ``layers['counts']`` = raw counts, obs with QC
    metrics, ``leiden`` and ``cell_type``, ``obsm['X_pca']``, and each cluster's label confidence in
    ``uns['cell_type_scores']`` (:mod:`scunlearn.data.labels`). ``uns['cell_type_source']`` says whose labels
    ``cell_type`` holds: the marker table's, or with ``cfg['cell_type_key']`` set the data's own ``obs[key]``
    (``source`` names the file in errors); the marker labels then go to ``obs['marker_cell_type']`` and their
    scores to ``uns['marker_cell_type_scores']``, or are skipped (logged) when no marker gene is in the data.
    """
    import scanpy as sc

    label_key = cfg.get("cell_type_key")
    own = own_labels(adata, label_key, source) if label_key else None  # before QC: a missing column fails at once
    adata = quality_control(adata, cfg["min_genes"], cfg["max_mt_fraction"], cfg["min_cells_per_gene"])
    adata.layers["counts"] = adata.X.copy()
    hvg = select_hvgs(adata, cfg["n_hvg"])
    sc.pp.normalize_total(adata, target_sum=cfg["target_sum"])
    sc.pp.log1p(adata)
    adata.var["highly_variable"] = hvg
    # annotate on all genes (markers need not be HVGs), model on HVGs
    n_pcs = min(cfg["n_pcs"], adata.n_obs - 1, int(hvg.sum()) - 1)
    sc.pp.pca(adata, n_comps=n_pcs, mask_var="highly_variable", random_state=seed)
    # exact kNN + UMAP weights without umap/pynndescent's per-process numba compile (scunlearn.data.neighbors)
    neighbors(adata, n_neighbors=cfg["n_neighbors"], n_pcs=min(cfg["neighbors_pcs"], n_pcs))
    sc.tl.leiden(adata, resolution=cfg["leiden_resolution"], flavor="igraph", n_iterations=2,
                 directed=False, random_state=seed)
    min_score = float(cfg.get("min_marker_score", MIN_MARKER_SCORE))
    if own is None:
        if "cell_type" in adata.obs.columns:
            log.info("the data's own obs['cell_type'] is replaced by the marker labels; to study its labels instead, "
                     "set preprocess.cell_type_key: cell_type")
        table = score_clusters(adata, markers, min_score=min_score)
        adata.obs["cell_type"] = _labels(adata, table, "leiden")
        adata.uns[CELL_TYPE_SOURCE] = FROM_MARKERS
        log.info("cell types (marker labels of the Leiden clusters, %s): %s", FROM_MARKERS,
                 adata.obs["cell_type"].value_counts().to_dict())
    else:
        table = None
        if markers["gene"].isin(adata.var_names).any():
            table = score_clusters(adata, markers, min_score=min_score)
            adata.obs[MARKER_LABELS] = _labels(adata, table, "leiden")
        else:
            log.warning("marker labels skipped: none of the marker genes (preprocess.markers) is in the data; the "
                        "study's cell types are obs['%s'] alone", label_key)
        # obs rows survive QC: the labels of the cells kept, as plain strings
        adata.obs["cell_type"] = _as_category(own.loc[adata.obs_names])
        adata.uns[CELL_TYPE_SOURCE] = f"obs['{label_key}']"
        log.info("cell types: the data's own labels obs['%s'] (preprocess.cell_type_key), not the marker labels: %s",
                 label_key, adata.obs["cell_type"].value_counts().to_dict())
        if table is not None:
            log.info("marker labels beside them, obs['%s']: %s; cell types x marker labels:\n%s", MARKER_LABELS,
                     adata.obs[MARKER_LABELS].value_counts().to_dict(),
                     pd.crosstab(adata.obs["cell_type"], adata.obs[MARKER_LABELS]).to_string())
    out = adata[:, hvg].copy()
    out.layers["counts"] = sp.csr_matrix(out.layers["counts"])
    for key in list(out.obsp.keys()):
        del out.obsp[key]
    out.uns.pop("neighbors", None)
    out.uns["preprocess"] = {k: v for k, v in cfg.items() if not isinstance(v, dict) and v is not None}
    if table is not None:  # the scores of the marker labels: of cell_type's, or of those beside the data's own
        out.uns[SCORES_KEY if own is None else MARKER_SCORES_KEY] = scores_record(table, min_score)
    return out
