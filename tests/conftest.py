"""Shared fixtures: the marker table and small simulated datasets built in the tests."""

from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

PRE_CFG = dict(min_genes=200, max_mt_fraction=0.10, min_cells_per_gene=3, target_sum=1e4, n_hvg=500,
               n_pcs=20, n_neighbors=15, neighbors_pcs=15, leiden_resolution=0.5)


def fresh_python(code: str, timeout: float = 300) -> str:
    """Run ``code`` in a fresh interpreter (this one's Python and path); fail with its stderr, else return its stdout.

    For what only a new process shows: which modules a stage imports, global torch settings.
    """
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def markers() -> pd.DataFrame:
    return pd.read_csv(ROOT / "resources/markers/pbmc.tsv", sep="\t")


@pytest.fixture(scope="session")
def raw(markers):
    from scunlearn.simulate import simulate_counts

    return simulate_counts(markers, n_cells=3000, n_genes=1000, seed=3)


@pytest.fixture(scope="session")
def processed(raw, markers):
    from scunlearn.preprocess import preprocess

    return preprocess(raw.copy(), dict(PRE_CFG), markers, seed=0)


def write_audit_inputs(d: Path, adata):
    """An audit's data inputs in folder ``d``: adata.h5ad, split.json, forget.json (30 random train
    cells) and matched.json (k = 7, at least 30 negatives in ``obsm['X_pca']``); returns
    (partition, count tensor)."""
    import numpy as np

    from scunlearn.io import write_json
    from scunlearn.matched import matched_negatives
    from scunlearn.pipeline import write_h5ad
    from scunlearn.splits import load_partition, make_forget_set, make_split
    from scunlearn.train import counts_tensor

    write_h5ad(adata, d / "adata.h5ad")
    split = make_split(adata.obs_names, 0.6, 0.25, seed=0)
    write_json(split, d / "split.json")
    write_json(make_forget_set(adata, split, {"kind": "random", "n": 30}, seed=0), d / "forget.json")
    part = load_partition(adata, d / "split.json", d / "forget.json")
    pca = np.asarray(adata.obsm["X_pca"])
    write_json(matched_negatives(pca[part.forget], pca[part.audit], adata.obs_names[part.audit], 7, 30,
                                 forget_barcodes=adata.obs_names[part.forget]), d / "matched.json")
    return part, counts_tensor(adata)
