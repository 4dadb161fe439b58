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
    from scunlearn.data.simulate import simulate_counts

    return simulate_counts(markers, n_cells=3000, n_genes=1000, seed=3)


@pytest.fixture(scope="session")
def processed(raw, markers):
    from scunlearn.data.preprocess import preprocess

    return preprocess(raw.copy(), dict(PRE_CFG), markers, seed=0)


def write_counts_h5ad(path: Path, seed: int, n_cells=40, n_genes=12, var_names=None) -> Path:
    """A user's h5ad file at ``path``: Poisson(2) counts, cells ``cell0..``, genes ``var_names`` (else ``G0..``)."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from scunlearn.io import write_h5ad

    rng = np.random.default_rng(seed)
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)))
    a.obs_names = [f"cell{i}" for i in range(n_cells)]
    a.var_names = var_names or [f"G{j}" for j in range(n_genes)]
    write_h5ad(a, path)
    return path


def write_audit_inputs(d: Path, adata):
    """An audit's data inputs in folder ``d``: adata.h5ad, split.json, forget.json (30 random train
    cells) and matched.json (k = 7, at least 30 negatives in ``obsm['X_pca']``, no fold groups);
    returns (partition, count tensor)."""
    import numpy as np

    from scunlearn.data.splits import load_partition, make_forget_set, make_split
    from scunlearn.io import write_h5ad, write_json
    from scunlearn.membership.matched import matched_negatives
    from scunlearn.vae.train import counts_tensor

    write_h5ad(adata, d / "adata.h5ad")
    split = make_split(adata.obs_names, 0.6, 0.25, seed=0)
    write_json(split, d / "split.json")
    write_json(make_forget_set(adata, split, {"kind": "random", "n": 30}, seed=0), d / "forget.json")
    part = load_partition(adata, d / "split.json", d / "forget.json")
    pca = np.asarray(adata.obsm["X_pca"])
    write_json(matched_negatives(pca[part.forget], pca[part.audit], adata.obs_names[part.audit], 7, 30,
                                 forget_barcodes=adata.obs_names[part.forget]), d / "matched.json")
    return part, counts_tensor(adata)


def write_reference_models(d: Path, adata, X, part, n_seeds: int, max_epochs: int = 1, batch_size: int = 64,
                           kl_warmup_epochs: int = 0, checkpoints: bool = False) -> dict[str, str]:
    """Baselines (trained on all training cells) and retrained models (on the retain cells), seeds
    0..n_seeds-1, in folder ``d``: their per-cell statistics ``{kind}{seed}.cells.npz`` (and with
    ``checkpoints`` their ``{kind}{seed}.pt``). Returns {"baseline/seed0": statistics path, ...}."""
    from scunlearn.runtime import seed_everything
    from scunlearn.vae.cellstats import write_cell_stats
    from scunlearn.vae.checkpoints import save_checkpoint
    from scunlearn.vae.model import VAEConfig, build_vae
    from scunlearn.vae.train import fit

    paths = {}
    for kind, train in (("baseline", part.train), ("retrain", part.retain)):
        for s in range(n_seeds):
            seed_everything(s, 1)
            m = build_vae(VAEConfig(n_genes=adata.n_vars, hidden=[16], latent=2))
            fit(m, X, train, part.validation, lr=3e-3, batch_size=batch_size, max_epochs=max_epochs,
                kl_warmup_epochs=kl_warmup_epochs, patience=max_epochs, seed=s)
            if checkpoints:
                save_checkpoint(m, d / f"{kind}{s}.pt", {"genes": list(map(str, adata.var_names))})
            write_cell_stats(m, X, adata.obs_names, d / f"{kind}{s}.cells.npz")
            paths[f"{kind}/seed{s}"] = str(d / f"{kind}{s}.cells.npz")
    (d / "markers.tsv").write_text("cell_type\tgene\nX\t" + adata.var_names[0] + "\n")
    return paths


def tiny_audit_job(d: Path):
    """A small audit job in folder ``d``: its data inputs (:func:`write_audit_inputs`), two retrained
    and two baseline reference models (one epoch each, :func:`write_reference_models`) and a markers
    file. Returns (adata, partition, count tensor, the stage's ``inp`` without its audited models, its
    ``params`` for one model of variant ``x``); the caller adds ``models``, ``cells`` and ``benchmarks``."""
    import anndata as ad
    import numpy as np

    from scunlearn.audit.attacks import resolve_attacks

    rng = np.random.default_rng(0)
    n, g = 600, 40
    types = np.where(np.arange(n) % 3 == 0, "B", "T")
    p = rng.dirichlet(np.ones(g), size=2)[(types == "B").astype(int)]
    counts = rng.poisson(p * 400).astype(np.float32)
    adata = ad.AnnData(counts, obs=pd.DataFrame({"cell_type": types}, index=[f"c{i}" for i in range(n)]),
                       var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))
    adata.layers["counts"] = counts.copy()
    logc = np.log1p(counts)
    # float32, as preprocessing stores it: the matched stage must cluster the fold groups in that precision
    adata.obsm["X_pca"] = ((logc - logc.mean(0)) @ rng.normal(size=(g, 5))).astype(np.float32)
    part, X = write_audit_inputs(d, adata)
    refs = write_reference_models(d, adata, X, part, 2)
    inp = {"adata": str(d / "adata.h5ad"), "split": str(d / "split.json"), "forget": str(d / "forget.json"),
           "matched": str(d / "matched.json"), "markers": str(d / "markers.tsv"),
           "ref_retrain": [refs[f"retrain/seed{s}"] for s in range(2)],
           "ref_baseline": [refs[f"baseline/seed{s}"] for s in range(2)], "controls": []}
    attacks = {"per_cell": {}, "mlp": {"folds": 3, "repeats": 1, "attacker": {"hidden": [8], "epochs": 10}},
               "loss": {}}
    params = {"run": "t", "dataset": "simulate", "forget": "scattered", "variant": "x", "method": "x",
              "model_seeds": [0], "seed": 0, "target_sum": 1e4, "self_names": [None],
              "ref_retrain": ["retrain/seed0", "retrain/seed1"], "ref_baseline": ["baseline/seed0", "baseline/seed1"],
              "controls": [], "audit": {"alpha": 0.05, "equivalence_margin": 0.1, "bootstrap": 50,
                                        "attacks": resolve_attacks(attacks), "utility": {"max_cells": 300, "folds": 3}}}
    return adata, part, X, inp, params
