"""Acquire the raw count matrix: download PBMC-33k, simulate, or read the user's file.

Whatever the source, the result is checked to be raw counts (finite, non-negative
integers that do not look normalised) and written as ``data/raw.h5ad``. Errors name the
file, the matrix read and the problem.
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

from scunlearn import ScunlearnError
from scunlearn.data.sources import PBMC33K_ARCHIVE, PBMC33K_URL
from scunlearn.io import atomic_path, sha256sum

log = logging.getLogger(__name__)



#: the "looks normalised" check needs at least this many cells: a few cells say too little about library sizes
NORMALISED_MIN_CELLS = 100
#: per-cell totals varying less than this (coefficient of variation) look normalised: library sizes of real UMI
#: data vary several-fold (CV 0.3 or more); totals normalised then rounded vary by < 0.03 (rounding only)
LIBRARY_CV_MIN = 0.05
#: a matrix whose largest value is at most this looks log-normalised (rounded log1p of 1e4-normalised data
#: reaches ~9, of CPM ~14); real UMI counts of that many cells reach hundreds (MALAT1, ribosomal, MT- genes)
MAX_VALUE_MIN = 15

#: ``adata.uns`` key of the user's file a raw matrix was read from (later errors name it)
SOURCE_FILE = "source_file"

#: the config switch that accepts integer data which look normalised
ACCEPT_KEY = "dataset.accept_normalised_looking"


def _values(X) -> np.ndarray:
    return X.data if sp.issparse(X) else np.asarray(X)


def counts_stats(X) -> dict:
    """Cells, per-cell totals (median, coefficient of variation over non-empty cells) and the largest value of X."""
    totals = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
    totals = totals[totals > 0]
    vals = _values(X)
    cv = float(totals.std() / totals.mean()) if len(totals) > 1 else float("nan")
    return {"cells": int(X.shape[0]), "median_total": float(np.median(totals)) if len(totals) else 0.0,
            "cv": cv, "max": float(vals.max()) if vals.size else 0.0}


def normalised_signs(X) -> list[str]:
    """What makes an integer matrix look normalised rather than UMI counts (empty list: it looks like counts)."""
    st = counts_stats(X)
    if st["cells"] < NORMALISED_MIN_CELLS:
        return []
    signs = []
    if st["cv"] < LIBRARY_CV_MIN:
        signs.append(f"per-cell totals are nearly constant (median {st['median_total']:.0f}, coefficient of "
                     f"variation {st['cv']:.4f} < {LIBRARY_CV_MIN}; UMI library sizes vary several-fold)")
    if st["max"] <= MAX_VALUE_MIN:
        signs.append(f"the largest value is {st['max']:.0f} over {st['cells']} cells (at most {MAX_VALUE_MIN}, as in "
                     "log-normalised data; UMI counts of that many cells reach hundreds)")
    return signs


def counts_problem(X, matrix: str = "X", accept_normalised: bool = False) -> str | None:
    """Why matrix ``matrix`` (named in the text) is not raw counts, or None when it is."""
    vals = _values(X)
    if not np.all(np.isfinite(vals)):
        n = int((~np.isfinite(vals)).sum())
        return f"{n} NaN/infinite values in the matrix {matrix}"
    if (vals < 0).any():
        return f"negative values in the matrix {matrix}"
    frac = np.mod(vals, 1) != 0
    if frac.any():
        return f"non-integer values in the matrix {matrix} (e.g. {vals[frac][0]:.4g})"
    signs = [] if accept_normalised else normalised_signs(X)
    if signs:
        return f"integers in the matrix {matrix} that {LOOK_NORMALISED}: {'; '.join(signs)}"
    return None


LOOK_NORMALISED = "look normalised"


def _accept_hint(*problems: str | None) -> str:
    """The config switch, offered only when integers that look normalised were what was refused."""
    if any(p and LOOK_NORMALISED in p for p in problems):
        return (f"; if these are raw counts that merely look normalised (e.g. downsampled to equal depth), "
                f"set {ACCEPT_KEY}: true")
    return ""


def check_raw_counts(adata: ad.AnnData, source: str, matrix: str = "X", accept_normalised: bool = False) -> None:
    """Raise a ScunlearnError naming ``source`` and ``matrix`` unless ``adata.X`` holds raw counts."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ScunlearnError(f"{source}: the matrix {matrix} is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    problem = counts_problem(adata.X, matrix, accept_normalised)
    if problem:
        raise ScunlearnError(f"{source}: {problem}; not raw counts — give the unnormalised UMI counts (an h5ad's X, "
                             f"layers['counts'] or .raw, or the Cell Ranger matrix){_accept_hint(problem)}")
    if adata.obs_names.has_duplicates:
        raise ScunlearnError(f"{source}: duplicate cell barcodes")


def h5ad_counts(adata: ad.AnnData, source: str, accept_normalised: bool = False) -> tuple[ad.AnnData, str]:
    """The raw counts of a user's h5ad and where they were read: ``layers['counts']`` when the file has one,
    else ``X``, else ``.raw`` (the same cells, maybe more genes); errors name every matrix read."""
    if "counts" in adata.layers:
        problem = counts_problem(adata.layers["counts"], "layers['counts']", accept_normalised)
        if problem:
            raise ScunlearnError(
                f"{source}: {problem}; not raw counts. The 'counts' layer is read whenever the file has one (X and "
                f".raw are then ignored): put the unnormalised UMI counts in it, or remove the layer to have X or "
                f".raw read{_accept_hint(problem)}")
        adata.X = adata.layers["counts"]
        return adata, "layers['counts']"
    x_problem = counts_problem(adata.X, "X", accept_normalised)
    if x_problem is None:
        return adata, "X"
    if adata.raw is None:
        raise ScunlearnError(
            f"{source}: {x_problem}; not raw counts. X was read because the file has no layers['counts'] and no "
            f".raw: give the unnormalised UMI counts in X, in layers['counts'] or in .raw{_accept_hint(x_problem)}")
    raw = ad.AnnData(X=adata.raw.X, obs=adata.obs.copy(), var=adata.raw.var.copy(), uns=dict(adata.uns))
    raw_problem = counts_problem(raw.X, ".raw", accept_normalised)
    if raw_problem is not None:
        raise ScunlearnError(
            f"{source}: {x_problem}, and {raw_problem}: neither X nor .raw holds raw counts (the file has no "
            f"layers['counts']). Give the unnormalised UMI counts in X, in layers['counts'] or in .raw"
            f"{_accept_hint(x_problem, raw_problem)}")
    log.info("%s: X is not raw counts (%s); reading .raw instead", source, x_problem)
    return raw, ".raw"


def merge_duplicate_genes(adata: ad.AnnData, source: str, policy: str = "sum") -> ad.AnnData:
    """Genes sharing a name are summed into one (``policy='sum'``, logged) or refused (``'error'``).

    10x symbol tables name distinct gene IDs alike; renaming them (``CD3D-1``) would hide
    marker genes from the annotation, so names are never made unique by suffixes.
    """
    names = pd.Index(adata.var_names.astype(str))
    if not names.has_duplicates:
        return adata
    dup = names[names.duplicated(keep=False)].unique()
    n_extra = int(names.duplicated().sum())
    examples = ", ".join(map(str, dup[:10])) + (", ..." if len(dup) > 10 else "")
    if policy == "error":
        raise ScunlearnError(
            f"{source}: {len(dup)} gene names occur more than once ({examples}); make them unique in the "
            "file, or set dataset.duplicate_genes: sum in the config to sum their counts")
    if policy != "sum":
        raise ScunlearnError(f"dataset.duplicate_genes: unknown value '{policy}' (use 'sum' or 'error')")
    codes, uniques = pd.factorize(names)
    G = sp.csr_matrix((np.ones(len(codes), dtype=np.float32), (np.arange(len(codes)), codes)),
                      shape=(len(codes), len(uniques)))
    X = sp.csr_matrix(adata.X) @ G
    first = ~names.duplicated()
    var = adata.var.iloc[np.flatnonzero(first)].copy()
    var.index = pd.Index(uniques, dtype=str)
    var["n_merged"] = np.bincount(codes)
    log.warning("%s: %d gene names occur more than once (%s); summed their counts into one gene each "
                "(%d genes -> %d; dataset.duplicate_genes: sum)", source, len(dup), examples,
                adata.n_vars, adata.n_vars - n_extra)
    out = ad.AnnData(X=X, obs=adata.obs.copy(), var=var, uns=dict(adata.uns))
    out.uns["duplicate_genes_summed"] = [str(d) for d in dup]
    return out


def _as_counts(adata: ad.AnnData, source: str, duplicate_genes: str = "sum", accept_normalised: bool = False,
               matrix: str = "X") -> ad.AnnData:
    """Checked raw counts (``matrix`` names where they were read) as float32 CSR, logging what was read."""
    check_raw_counts(adata, source, matrix, accept_normalised)
    st = counts_stats(adata.X)
    log.info("%s: raw counts read from %s: %d cells x %d genes; per-cell totals median %.0f (coefficient of "
             "variation %.2f); largest value %.0f", source, matrix, adata.n_obs, adata.n_vars, st["median_total"],
             st["cv"], st["max"])
    if accept_normalised and normalised_signs(adata.X):
        log.warning("%s: %s looks normalised (%s); accepted because %s is true", source, matrix,
                    "; ".join(normalised_signs(adata.X)), ACCEPT_KEY)
    adata = merge_duplicate_genes(adata, source, duplicate_genes)
    X = adata.X if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    adata.X = sp.csr_matrix(X, dtype=np.float32)
    return adata


def read_user_file(path: str | Path, fmt: str, duplicate_genes: str = "sum",
                   accept_normalised: bool = False) -> ad.AnnData:
    """Read a user's raw-count file: ``h5ad`` (``layers['counts']``, else ``X``, else ``.raw``), ``10x_mtx``
    (a folder) or ``10x_h5``."""
    import scanpy as sc

    path = Path(path)
    if not path.exists():
        raise ScunlearnError(f"{path}: dataset file not found (dataset.path, source '{fmt}')")
    matrix = "X"
    try:
        if fmt == "h5ad":
            adata = ad.read_h5ad(path)
        elif fmt == "10x_mtx":
            adata = sc.read_10x_mtx(path, var_names="gene_symbols", make_unique=False)
        elif fmt == "10x_h5":
            adata = sc.read_10x_h5(path)
        else:
            raise ScunlearnError(f"unknown dataset.source '{fmt}'")
    except ScunlearnError:
        raise
    except Exception as e:  # noqa: BLE001 - turn library errors into a clear message
        raise ScunlearnError(f"{path}: cannot read as {fmt}: {type(e).__name__}: {e}") from e
    if fmt == "h5ad":  # its obs columns (the user's labels, donors, samples) are kept through to preprocessing
        adata, matrix = h5ad_counts(adata, str(path), accept_normalised)
    adata = _as_counts(adata, str(path), duplicate_genes, accept_normalised, matrix)
    adata.uns[SOURCE_FILE] = str(path)  # named by later errors about the file's content (its obs columns)
    return adata


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


def pin_sha256(checksums: str | Path, digest: str, file: str = PBMC33K_ARCHIVE) -> None:
    """Write ``digest`` into the ``sha256`` column of ``checksums`` for ``file`` (atomically)."""
    table = pd.read_csv(checksums, sep="\t", dtype=str, keep_default_na=False)
    table.loc[table["file"] == file, "sha256"] = digest
    with atomic_path(checksums) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


def _refuse(archive: Path, url: str, checksums: str | Path, why: str) -> ScunlearnError:
    """Delete a bad cached archive and return the error that says how to fetch it again."""
    archive.unlink(missing_ok=True)
    return ScunlearnError(
        f"PBMC-33k archive refused: {why}.\n"
        f"The cached file {archive} has been deleted so that no later run uses it.\n"
        f"To fetch it again, rerun snakemake (it downloads {url}),\n"
        f"or download it by hand and place it at\n  {archive}\n"
        f"If 10x Genomics republished the archive and you trust the new file, empty the sha256 column "
        f"of {checksums}: the next download pins the new digest there."
    )


def download_pbmc33k(resources_dir: str | Path, url: str = PBMC33K_URL) -> Path:
    """Download the PBMC-33k archive into ``resources_dir`` (atomically); the error says how to do it by hand."""
    archive = Path(resources_dir) / PBMC33K_ARCHIVE
    try:
        download(url, archive)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise ScunlearnError(_manual_message(archive, url, f"download failed ({e})")) from e
    return archive


def fetch_pbmc33k(resources_dir: str | Path, checksums: str | Path, url: str = PBMC33K_URL,
                  duplicate_genes: str = "sum", accept_normalised: bool = False) -> ad.AnnData:
    """Return PBMC-33k raw counts, downloading the archive into ``resources_dir`` if absent.

    The archive must match the sha256 pinned in ``checksums`` and hold the expected numbers
    of cells and genes; a bad archive is deleted, with a message saying how to fetch it
    again. When no sha256 is pinned yet, the first archive that passes the shape check
    pins its digest in ``checksums`` (a file to commit), so every later copy is checked.
    """
    import tempfile

    import scanpy as sc

    resources_dir = Path(resources_dir)
    archive = resources_dir / PBMC33K_ARCHIVE
    expected = load_checksums(checksums).loc[PBMC33K_ARCHIVE]
    if not archive.exists():
        download_pbmc33k(resources_dir, url)
    digest = sha256sum(archive)
    if expected["sha256"] and digest != expected["sha256"]:
        raise _refuse(archive, url, checksums,
                      f"checksum mismatch: {archive} has sha256 {digest}, but {checksums} pins {expected['sha256']}")
    # extract into a private folder that is removed afterwards: nothing stale or half-extracted stays behind
    with tempfile.TemporaryDirectory(dir=resources_dir, prefix=".extract-") as tmp:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise _refuse(archive, url, checksums, f"{archive} is not a readable tar.gz ({e})") from e
        mtx_dir = Path(tmp) / "filtered_gene_bc_matrices" / "hg19"
        if not (mtx_dir / "matrix.mtx").exists():
            raise _refuse(archive, url, checksums, f"{archive} lacks filtered_gene_bc_matrices/hg19/matrix.mtx")
        try:
            adata = sc.read_10x_mtx(mtx_dir, var_names="gene_symbols", make_unique=False)
        except Exception as e:  # noqa: BLE001
            raise _refuse(archive, url, checksums, f"{archive}: unreadable matrix ({type(e).__name__}: {e})") from e
    n_cells, n_genes = int(expected["n_cells"]), int(expected["n_genes"])
    if adata.shape != (n_cells, n_genes):
        raise _refuse(archive, url, checksums,
                      f"{archive} holds {adata.shape[0]} cells x {adata.shape[1]} genes, "
                      f"expected {n_cells} x {n_genes}")
    if expected["sha256"]:
        log.info("sha256 verified against %s: %s", checksums, digest)
    else:
        pin_sha256(checksums, digest)
        log.warning("no sha256 was pinned for %s: pinned %s in %s (trust on first use). Commit that file so "
                    "that every later copy of the archive is checked against this digest.",
                    PBMC33K_ARCHIVE, digest, checksums)
    adata.uns["source_sha256"] = digest
    return _as_counts(adata, str(archive), duplicate_genes, accept_normalised)


def acquire(dataset: dict, markers: pd.DataFrame, resources_dir: str | Path, checksums: str | Path) -> ad.AnnData:
    """Dispatch on ``dataset['source']`` and return validated raw counts."""
    source = dataset["source"]
    dups, accept = dataset.get("duplicate_genes", "sum"), bool(dataset.get("accept_normalised_looking", False))
    if source == "simulate":
        from scunlearn.data.simulate import simulate_counts

        sim = dict(dataset.get("simulate", {}))
        if "marker_fold" in sim:
            sim["marker_fold"] = tuple(sim["marker_fold"])
        adata = simulate_counts(markers, **sim)
        return _as_counts(adata, "simulated data", dups, accept)
    if source == "pbmc33k":
        return fetch_pbmc33k(resources_dir, checksums, dataset.get("url") or PBMC33K_URL, dups, accept)
    if source in ("h5ad", "10x_mtx", "10x_h5"):
        if not dataset.get("path"):
            raise ScunlearnError(f"dataset.source is '{source}' but dataset.path is not set")
        return read_user_file(dataset["path"], source, dups, accept)
    raise ScunlearnError(f"unknown dataset.source '{source}'")
