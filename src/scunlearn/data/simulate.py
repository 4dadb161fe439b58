"""A simulator of realistic PBMC-like raw UMI counts: the built-in demo dataset.

Negative-binomial (gamma-Poisson) counts with gamma-distributed gene means, log-normal
library sizes, cell types of very different sizes (one rare type, ~1% of cells) each
with its own marker genes (real PBMC marker names, so the same marker table annotates
simulated and real data), mitochondrial ``MT-`` genes, and a few low-quality cells
(damaged: high MT fraction; empty: very few genes) that QC must remove.
Deterministic from its seed; ground truth goes to ``obs['true_type']`` and
``obs['low_quality']``.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scunlearn import ScunlearnError

log = logging.getLogger(__name__)

MT_GENES = [
    "MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3",
    "MT-ND3", "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB",
]

#: default composition: cell type -> fraction of cells (sums to 1)
DEFAULT_TYPES = {
    "T cell": 0.40,
    "CD8 T cell": 0.12,
    "B cell": 0.14,
    "NK cell": 0.10,
    "CD14 Monocyte": 0.15,
    "FCGR3A Monocyte": 0.05,
    "Dendritic cell": 0.03,
    "Megakaryocyte": 0.01,
}


def simulate_counts(
    markers: pd.DataFrame,
    n_cells: int = 4000,
    n_genes: int = 2000,
    cell_types: dict[str, float] | None = None,
    library_log_mean: float = 7.6,
    library_log_sd: float = 0.35,
    gene_mean_shape: float = 0.3,
    dispersion_shape: float = 2.0,
    marker_fold: tuple[float, float] = (10.0, 30.0),
    de_fraction: float = 0.2,
    de_sd: float = 1.0,
    mt_share: float = 0.03,
    low_quality_fraction: float = 0.02,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate an AnnData of raw counts (cells x genes, CSR int32) with ground-truth labels.

    ``markers`` is the marker table (columns ``cell_type``, ``gene``); every type in
    ``cell_types`` gets its markers up-regulated by a factor drawn from ``marker_fold``
    and ``de_fraction`` of the other genes perturbed log-normally (sd ``de_sd``).
    """
    rng = np.random.default_rng(seed)
    cell_types = dict(cell_types or DEFAULT_TYPES)
    total = sum(cell_types.values())
    types = list(cell_types)
    probs = np.array([cell_types[t] / total for t in types])

    marker_genes = list(dict.fromkeys(markers["gene"]))
    n_other = n_genes - len(marker_genes) - len(MT_GENES)
    if n_other < 10:
        need = len(marker_genes) + len(MT_GENES) + 10
        raise ScunlearnError(f"dataset.simulate.n_genes={n_genes} is too small: the {len(marker_genes)} marker "
                             f"genes and {len(MT_GENES)} MT genes need at least {need}")
    genes = marker_genes + MT_GENES + [f"SIMG{i:05d}" for i in range(n_other)]
    G = len(genes)
    is_mt = np.isin(genes, MT_GENES)

    # baseline expression profile: gamma-distributed relative means
    base = rng.gamma(gene_mean_shape, 1.0, size=G)
    mk_idx = np.arange(len(marker_genes))
    base[mk_idx] = np.quantile(base, 0.6)  # markers: modest outside their type
    base[is_mt] = 0.0
    base /= base.sum()

    # per-type profiles
    profiles = np.empty((len(types), G))
    for k, t in enumerate(types):
        p = base.copy()
        de = rng.random(G) < de_fraction
        de &= ~is_mt
        p[de] *= np.exp(rng.normal(0.0, de_sd, size=de.sum()))
        own = markers.loc[markers["cell_type"] == t, "gene"].tolist()
        if t == "CD8 T cell":  # CD8 T cells are T cells too
            own += markers.loc[markers["cell_type"] == "T cell", "gene"].tolist()
        for g in own:
            j = genes.index(g)
            p[j] *= rng.uniform(*marker_fold)
        p /= p.sum()
        profiles[k] = p

    mt_profile = np.where(is_mt, rng.gamma(2.0, 1.0, size=G), 0.0)
    mt_profile /= mt_profile.sum()

    # cell assignment with exact proportions (the rare type always present)
    counts_per_type = np.maximum(1, np.round(probs * n_cells).astype(int))
    counts_per_type[0] += n_cells - counts_per_type.sum()
    labels = np.repeat(np.arange(len(types)), counts_per_type)
    rng.shuffle(labels)

    lib = np.exp(rng.normal(library_log_mean, library_log_sd, size=n_cells))
    mt_frac = np.clip(rng.normal(mt_share, mt_share / 3, size=n_cells), 0.001, 0.5)

    low_q = np.zeros(n_cells, dtype=bool)
    n_low = int(round(low_quality_fraction * n_cells))
    if n_low:
        bad = rng.choice(n_cells, size=n_low, replace=False)
        low_q[bad] = True
        damaged, empty = bad[: n_low // 2], bad[n_low // 2 :]
        mt_frac[damaged] = rng.uniform(0.25, 0.5, size=len(damaged))
        lib[empty] = rng.uniform(60, 150, size=len(empty))

    theta = rng.gamma(dispersion_shape, 2.0, size=G) + 0.5  # per-gene inverse dispersion
    mean = lib[:, None] * ((1 - mt_frac)[:, None] * profiles[labels] + mt_frac[:, None] * mt_profile[None, :])
    # gamma-Poisson = negative binomial with mean `mean`, inverse dispersion `theta`
    rate = rng.gamma(theta[None, :], mean / theta[None, :])
    X = rng.poisson(rate).astype(np.int32)

    obs = pd.DataFrame(
        {
            "true_type": pd.Categorical([types[i] for i in labels], categories=types),
            "low_quality": low_q,
        },
        index=pd.Index([f"SIM{i:06d}-1" for i in range(n_cells)], name="barcode"),
    )
    var = pd.DataFrame(index=pd.Index(genes, name="gene"))
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=var)
    adata.uns["simulation"] = {"seed": int(seed), "n_cells": int(n_cells), "n_genes": int(G)}
    log.info("simulated %d cells x %d genes; types: %s", n_cells, G,
             dict(zip(types, counts_per_type.tolist())))
    return adata
