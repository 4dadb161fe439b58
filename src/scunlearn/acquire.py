"""Acquire the raw count matrix: download PBMC-33k, simulate, or read the user's file.

Whatever the source, the result is checked to be raw counts (finite, non-negative
integers) and written as ``data/raw.h5ad``. Errors name the file and the problem.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import ScunlearnError
from .io import atomic_path, sha256sum

log = logging.getLogger(__name__)

PBMC33K_URL = (
    "https://cf.10xgenomics.com/samples/cell-exp/1.1.0/pbmc33k/"
    "pbmc33k_filtered_gene_bc_matrices.tar.gz"
)
PBMC33K_ARCHIVE = "pbmc33k_filtered_gene_bc_matrices.tar.gz"


def check_raw_counts(adata: ad.AnnData, source: str) -> None:
    """Raise a ScunlearnError naming ``source`` unless ``adata.X`` holds raw counts."""
    X = adata.X
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ScunlearnError(f"{source}: the matrix is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    vals = X.data if sp.issparse(X) else np.asarray(X)
    if not np.all(np.isfinite(vals)):
        n = int((~np.isfinite(vals)).sum())
        raise ScunlearnError(f"{source}: {n} NaN/infinite values in the matrix; expected raw integer counts")
    if (vals < 0).any():
        raise ScunlearnError(f"{source}: negative values in the matrix; not raw counts")
    if not np.all(np.equal(np.mod(vals, 1), 0)):
        raise ScunlearnError(
            f"{source}: non-integer values in the matrix (e.g. {vals[np.mod(vals, 1) != 0][0]:.4g}); "
            "not raw counts — give the unnormalised UMI counts (adata.raw or a 'counts' layer)"
        )
    if adata.obs_names.has_duplicates:
        raise ScunlearnError(f"{source}: duplicate cell barcodes")


def _as_counts(adata: ad.AnnData, source: str) -> ad.AnnData:
    adata.var_names_make_unique()
    check_raw_counts(adata, source)
    X = adata.X if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    adata.X = sp.csr_matrix(X, dtype=np.float32)
    return adata


def read_user_file(path: str | Path, fmt: str) -> ad.AnnData:
    """Read a user's raw-count file: ``h5ad``, ``10x_mtx`` (a folder) or ``10x_h5``."""
    import scanpy as sc

    path = Path(path)
    if not path.exists():
        raise ScunlearnError(f"{path}: dataset file not found (dataset.path, source '{fmt}')")
    try:
        if fmt == "h5ad":
            adata = ad.read_h5ad(path)
            if "counts" in adata.layers:
                adata.X = adata.layers["counts"]
        elif fmt == "10x_mtx":
            adata = sc.read_10x_mtx(path, var_names="gene_symbols", make_unique=True)
        elif fmt == "10x_h5":
            adata = sc.read_10x_h5(path)
        else:
            raise ScunlearnError(f"unknown dataset.source '{fmt}'")
    except ScunlearnError:
        raise
    except Exception as e:  # noqa: BLE001 - turn library errors into a clear message
        raise ScunlearnError(f"{path}: cannot read as {fmt}: {type(e).__name__}: {e}") from e
    return _as_counts(adata, str(path))


def load_checksums(path: str | Path) -> pd.DataFrame:
    """The table of expected archive checksums and shapes kept in ``resources/``."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False).set_index("file")


def _manual_message(archive: Path, url: str, why: str) -> str:
    return (
        f"PBMC-33k could not be obtained: {why}.\n"
        f"Download it by hand from\n  {url}\n"
        f"and place the archive at\n  {archive}\n"
        "then rerun: the workflow uses that file instead of downloading."
    )


def download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Fetch ``url`` to ``dest`` atomically (``file://`` URLs work too)."""
    log.info("downloading %s", url)
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)


def fetch_pbmc33k(resources_dir: str | Path, checksums: str | Path, url: str = PBMC33K_URL) -> ad.AnnData:
    """Return PBMC-33k raw counts, downloading the archive into ``resources_dir`` if absent.

    The archive is verified against ``checksums`` (sha256 when pinned there, always the
    expected numbers of cells and genes). Offline or on a mismatch the error says where
    to put the archive by hand.
    """
    import scanpy as sc

    resources_dir = Path(resources_dir)
    archive = resources_dir / PBMC33K_ARCHIVE
    expected = load_checksums(checksums).loc[PBMC33K_ARCHIVE]
    if not archive.exists():
        try:
            download(url, archive)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise ScunlearnError(_manual_message(archive, url, f"download failed ({e})")) from e
    digest = sha256sum(archive)
    if expected["sha256"]:
        if digest != expected["sha256"]:
            raise ScunlearnError(_manual_message(
                archive, url, f"checksum mismatch for {archive}: sha256 {digest}, expected {expected['sha256']} "
                "(delete the file and retry)"))
        log.info("sha256 verified: %s", digest)
    else:
        log.warning("no sha256 pinned in %s; archive sha256 is %s (pin it there)", checksums, digest)
    out = resources_dir / "filtered_gene_bc_matrices"
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(resources_dir, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ScunlearnError(_manual_message(archive, url, f"{archive} is not a readable tar.gz ({e})")) from e
    mtx_dir = out / "hg19"
    if not (mtx_dir / "matrix.mtx").exists():
        raise ScunlearnError(_manual_message(archive, url, f"{archive} lacks filtered_gene_bc_matrices/hg19/matrix.mtx"))
    adata = sc.read_10x_mtx(mtx_dir, var_names="gene_symbols", make_unique=True)
    n_cells, n_genes = int(expected["n_cells"]), int(expected["n_genes"])
    if adata.shape != (n_cells, n_genes):
        raise ScunlearnError(_manual_message(
            archive, url, f"{archive} holds {adata.shape[0]} cells x {adata.shape[1]} genes, expected {n_cells} x {n_genes}"))
    adata.uns["source_sha256"] = digest
    return _as_counts(adata, str(archive))


def acquire(dataset: dict, markers: pd.DataFrame, resources_dir: str | Path, checksums: str | Path) -> ad.AnnData:
    """Dispatch on ``dataset['source']`` and return validated raw counts."""
    source = dataset["source"]
    if source == "simulate":
        from .simulate import simulate_counts

        sim = dict(dataset.get("simulate", {}))
        if "marker_fold" in sim:
            sim["marker_fold"] = tuple(sim["marker_fold"])
        adata = simulate_counts(markers, **sim)
        return _as_counts(adata, "simulated data")
    if source == "pbmc33k":
        return fetch_pbmc33k(resources_dir, checksums, dataset.get("url") or PBMC33K_URL)
    if source in ("h5ad", "10x_mtx", "10x_h5"):
        if not dataset.get("path"):
            raise ScunlearnError(f"dataset.source is '{source}' but dataset.path is not set")
        return read_user_file(dataset["path"], source)
    raise ScunlearnError(f"unknown dataset.source '{source}'")
