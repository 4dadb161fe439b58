"""Stages of the data rules: download, acquire, preprocess, split, forget sets (no torch)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from scunlearn import ScunlearnError
from scunlearn.io import read_adata, read_json, read_markers, write_h5ad, write_json

if TYPE_CHECKING:  # torch is imported by the stages that need it: data and report stages run without it
    import anndata as ad

log = logging.getLogger(__name__)


def matrix_checksum(adata: ad.AnnData) -> str:
    """SHA-256 of the count matrix content, cell barcodes and gene names (not of the file bytes)."""
    import scipy.sparse as sp

    X = sp.csr_matrix(adata.X)
    h = hashlib.sha256()
    for arr in (X.indptr, X.indices, X.data.astype(np.float64)):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update("\n".join(adata.obs_names).encode())
    h.update("\n".join(adata.var_names).encode())
    return h.hexdigest()


def stage_download(inp, out, params, threads):
    from scunlearn.data.acquire import download_pbmc33k

    download_pbmc33k(Path(out["archive"]).parent, params["url"])
    log.info("downloaded %s to %s (verified by acquire)", params["url"], out["archive"])


def stage_acquire(inp, out, params, threads):
    from scunlearn.data.acquire import acquire

    adata = acquire(params["dataset"], read_markers(inp["markers"]), params["resources_dir"], params["checksums"])
    adata.uns["data_sha256"] = matrix_checksum(adata)
    log.info("raw data: %d cells x %d genes; content sha256 %s", adata.n_obs, adata.n_vars, adata.uns["data_sha256"])
    write_h5ad(adata, out["raw"])


def stage_preprocess(inp, out, params, threads):
    from scunlearn.data.preprocess import preprocess

    raw = read_adata(inp["raw"])
    user_file = raw.uns.get("source_file")  # the user's file acquire read (scunlearn.data.acquire.SOURCE_FILE)
    source = f"{user_file} (read into {inp['raw']})" if user_file else str(inp["raw"])
    adata = preprocess(raw, params["preprocess"], read_markers(inp["markers"]), params["seed"], source)
    adata.uns["data_sha256"] = raw.uns.get("data_sha256", "")
    write_h5ad(adata, out["adata"])


def stage_split(inp, out, params, threads):
    from scunlearn.data.splits import make_split

    adata = read_adata(inp["adata"])
    s = params["splits"]
    split = make_split(adata.obs_names, s["train_fraction"], s["validation_fraction"], params["seed"])
    log.info("split sizes: %s", split["sizes"])
    write_json(split, out["split"])


def stage_forget(inp, out, params, threads):
    from scunlearn.data.splits import make_forget_set

    adata = read_adata(inp["adata"])
    try:
        fs = make_forget_set(adata, read_json(inp["split"]), params["spec"], params["seed"], params["name"])
    except ScunlearnError as e:
        raise ScunlearnError(f"config forget_sets.{params['name']}: {e}") from e
    labels = adata.obs.loc[fs["forget"], "cell_type"].astype(str).value_counts().to_dict()
    fs["cell_types"] = labels
    log.info("forget set %s: %d cells; cell types %s", params["name"], fs["size"], labels)
    write_json(fs, out["forget"])
