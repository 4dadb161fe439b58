"""Shared fixtures: the marker table and small simulated datasets built in the tests."""

from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

PRE_CFG = dict(min_genes=200, max_mt_fraction=0.10, min_cells_per_gene=3, target_sum=1e4, n_hvg=500,
               n_pcs=20, n_neighbors=15, neighbors_pcs=15, leiden_resolution=0.5)


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
