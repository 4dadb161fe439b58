"""Preprocessing as the paper describes it, with the reference code's HVG bug fixed.

QC (min genes per cell, MT fraction), raw counts kept in ``layers['counts']``,
library-size normalisation + log1p in ``X``, ``seurat_v3`` highly-variable genes
computed **on the raw counts**, PCA / neighbours / Leiden, and clusters annotated
with a marker table so the rare cluster is found by biology, not by a cluster number.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scunlearn import ScunlearnError
from scunlearn.data.neighbors import neighbors

log = logging.getLogger(__name__)


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


UNKNOWN = "unknown"


def annotate_clusters(adata: ad.AnnData, markers: pd.DataFrame, cluster_key: str = "leiden",
                      min_score: float = 0.0) -> pd.Series:
    """Label each cluster with the marker-table cell type whose markers score highest there.

    Score = mean over the type's markers of per-gene z-scored log expression, averaged
    over the cluster's cells. Types with no marker in the data are skipped. A cluster whose
    best score is below ``min_score`` (``preprocess.min_marker_score``) expresses no type's
    markers convincingly and is labelled ``unknown`` (logged), never given a type.
    """
    present = markers[markers["gene"].isin(adata.var_names)]
    if present.empty:
        raise ScunlearnError("none of the marker genes is in the data; check preprocess.markers")
    genes = present["gene"].unique().tolist()  # a list: pandas 3's unique() of strings is no ndarray for anndata
    X = adata[:, genes].X
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    Z = (X - X.mean(0)) / (X.std(0) + 1e-8)
    zdf = pd.DataFrame(Z, columns=genes, index=adata.obs_names)
    type_scores = pd.DataFrame({t: zdf[g["gene"].tolist()].mean(axis=1) for t, g in present.groupby("cell_type")})
    by_cluster = type_scores.groupby(adata.obs[cluster_key].values, observed=True).mean()
    best = by_cluster.idxmax(axis=1)
    labels = {}
    for c, t in best.items():
        n, score = int((adata.obs[cluster_key] == c).sum()), float(by_cluster.loc[c, t])
        if score < min_score:
            labels[c] = UNKNOWN
            log.warning("cluster %s (%d cells) -> %s: best marker score %.2f (%s) is below "
                        "preprocess.min_marker_score = %.2f", c, n, UNKNOWN, score, t, min_score)
        else:
            labels[c] = t
            log.info("cluster %s (%d cells) -> %s (score %.2f)", c, n, t, score)
    return adata.obs[cluster_key].map(labels).astype("category")


def preprocess(adata: ad.AnnData, cfg: dict, markers: pd.DataFrame, seed: int) -> ad.AnnData:
    """Run the whole preprocessing (README, "The PBMC-33k study") and return the HVG-subset AnnData.

    Returns ``X`` = log1p(normalised), ``layers['counts']`` = raw counts, obs with QC
    metrics, ``leiden`` and ``cell_type``, ``obsm['X_pca']``.
    """
    import scanpy as sc

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
    adata.obs["cell_type"] = annotate_clusters(adata, markers, min_score=cfg.get("min_marker_score", 0.0))
    log.info("cell types: %s", adata.obs["cell_type"].value_counts().to_dict())
    out = adata[:, hvg].copy()
    out.layers["counts"] = sp.csr_matrix(out.layers["counts"])
    for key in list(out.obsp.keys()):
        del out.obsp[key]
    out.uns.pop("neighbors", None)
    out.uns["preprocess"] = {k: v for k, v in cfg.items() if not isinstance(v, dict)}
    return out
