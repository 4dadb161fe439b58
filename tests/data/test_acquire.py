"""Acquisition: duplicate gene names in a user's file, and the PBMC-33k archive's digest (pinned on first
download, a wrong archive refused and deleted), all offline."""

import io
import logging
import tarfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.io import mmwrite

from scunlearn import ScunlearnError
from tests.conftest import ROOT, write_counts_h5ad

# ------------------------------------------------------------------ duplicate gene names

def test_duplicate_gene_names_are_summed_and_logged(tmp_path, caplog):
    from scunlearn.data.acquire import read_user_file

    names = ["CD3D", "PF4", "CD3D", "G3", "PF4", "G5"]
    p = write_counts_h5ad(tmp_path / "dups.h5ad", seed=0, n_genes=6, var_names=names)
    X = ad.read_h5ad(p).X.toarray()
    with caplog.at_level(logging.WARNING):
        out = read_user_file(p, "h5ad")
    assert list(out.var_names) == ["CD3D", "PF4", "G3", "G5"]  # never renamed to CD3D-1
    got = out.X.toarray()
    assert np.array_equal(got[:, 0], X[:, 0] + X[:, 2]) and np.array_equal(got[:, 1], X[:, 1] + X[:, 4])
    assert np.array_equal(got[:, 2], X[:, 3])
    assert "2 gene names occur more than once (CD3D, PF4)" in caplog.text and "summed" in caplog.text
    assert str(p) in caplog.text


def test_duplicate_gene_names_refused_when_asked(tmp_path):
    from scunlearn.data.acquire import read_user_file

    p = write_counts_h5ad(tmp_path / "dups.h5ad", seed=0, n_genes=3, var_names=["A", "B", "A"])
    with pytest.raises(ScunlearnError) as e:
        read_user_file(p, "h5ad", duplicate_genes="error")
    assert str(p) in str(e.value) and "dataset.duplicate_genes" in str(e.value) and "(A)" in str(e.value)


def test_duplicate_symbols_of_a_10x_folder_are_summed(tmp_path):
    from scunlearn.data.acquire import read_user_file

    d = tmp_path / "mtx"
    d.mkdir()
    mmwrite(d / "matrix.mtx", sp.coo_matrix(np.array([[1, 2], [3, 4], [5, 6]])))  # genes x cells
    (d / "genes.tsv").write_text("ENSG1\tCD3D\nENSG2\tCD3D\nENSG3\tPF4\n")
    (d / "barcodes.tsv").write_text("AAAC-1\nAAAG-1\n")
    out = read_user_file(d, "10x_mtx")
    assert list(out.var_names) == ["CD3D", "PF4"]
    assert out.X.toarray().tolist() == [[4, 5], [6, 6]]


# ------------------------------------------------------------------ the PBMC-33k archive's digest

def _fake_archive(path: Path, n_cells=6, n_genes=4) -> Path:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    mmwrite(buf, sp.coo_matrix(rng.integers(1, 5, size=(n_genes, n_cells))))
    files = {"matrix.mtx": buf.getvalue(),
             "genes.tsv": "".join(f"ENSG{i}\tGENE{i}\n" for i in range(n_genes)).encode(),
             "barcodes.tsv": "".join(f"AAAC{i}-1\n" for i in range(n_cells)).encode()}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"filtered_gene_bc_matrices/hg19/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _checksums(tmp_path, sha="", n_cells=6, n_genes=4) -> Path:
    from scunlearn.data.acquire import PBMC33K_ARCHIVE

    p = tmp_path / "checksums.tsv"
    pd.DataFrame([{"file": PBMC33K_ARCHIVE, "url": "x", "sha256": sha, "n_cells": n_cells, "n_genes": n_genes}]) \
        .to_csv(p, sep="\t", index=False)
    return p


def test_first_download_pins_the_archive_digest(tmp_path, caplog):
    from scunlearn.data.acquire import PBMC33K_ARCHIVE, fetch_pbmc33k, load_checksums
    from scunlearn.io import sha256sum

    src = _fake_archive(tmp_path / "mirror.tar.gz")
    sums = _checksums(tmp_path)
    with caplog.at_level(logging.WARNING):
        fetch_pbmc33k(tmp_path / "res", sums, url=src.as_uri())
    assert load_checksums(sums).loc[PBMC33K_ARCHIVE, "sha256"] == sha256sum(src)
    assert "pinned" in caplog.text and "Commit that file" in caplog.text and str(sums) in caplog.text
    assert not list((tmp_path / "res").glob(".extract-*"))  # nothing extracted is left behind


def test_archive_with_wrong_digest_is_refused_and_deleted(tmp_path):
    from scunlearn.data.acquire import PBMC33K_ARCHIVE, fetch_pbmc33k

    res = tmp_path / "res"
    res.mkdir()
    cached = _fake_archive(res / PBMC33K_ARCHIVE)  # e.g. a wrong archive cached by an earlier run
    sums = _checksums(tmp_path, sha="0" * 64)
    with pytest.raises(ScunlearnError) as e:
        fetch_pbmc33k(res, sums, url="file:///nowhere")
    msg = str(e.value)
    assert not cached.exists()
    assert "checksum mismatch" in msg and str(cached) in msg and str(sums) in msg
    assert "has been deleted" in msg and "rerun snakemake" in msg and "file:///nowhere" in msg


def test_archive_of_the_wrong_shape_is_refused_deleted_and_not_pinned(tmp_path):
    from scunlearn.data.acquire import PBMC33K_ARCHIVE, fetch_pbmc33k, load_checksums

    src = _fake_archive(tmp_path / "mirror.tar.gz")
    sums = _checksums(tmp_path, n_cells=33148, n_genes=32738)
    with pytest.raises(ScunlearnError, match="holds 6 cells x 4 genes, expected 33148 x 32738"):
        fetch_pbmc33k(tmp_path / "res", sums, url=src.as_uri())
    assert not (tmp_path / "res" / PBMC33K_ARCHIVE).exists()
    assert load_checksums(sums).loc[PBMC33K_ARCHIVE, "sha256"] == ""


def test_download_stage_then_acquire_pins_and_reads_the_archive(tmp_path):
    """The two rules' stages in order: pbmc33k_archive downloads, acquire verifies, pins and reads."""
    from scunlearn.data.acquire import PBMC33K_ARCHIVE, load_checksums
    from scunlearn.io import sha256sum
    from scunlearn.stages.data import stage_acquire, stage_download

    src = _fake_archive(tmp_path / "mirror.tar.gz")
    res = tmp_path / "res"
    stage_download({}, {"archive": str(res / PBMC33K_ARCHIVE)}, {"url": src.as_uri()}, 1)
    assert sha256sum(res / PBMC33K_ARCHIVE) == sha256sum(src)
    sums = _checksums(tmp_path)
    stage_acquire({"data": [str(res / PBMC33K_ARCHIVE)], "markers": str(ROOT / "resources/markers/pbmc.tsv")},
                  {"raw": str(tmp_path / "raw.h5ad")},
                  {"dataset": {"source": "pbmc33k", "url": src.as_uri()}, "resources_dir": str(res),
                   "checksums": str(sums)}, 1)
    raw = ad.read_h5ad(tmp_path / "raw.h5ad")
    assert raw.shape == (6, 4) and raw.uns["source_sha256"] == sha256sum(src)
    assert load_checksums(sums).loc[PBMC33K_ARCHIVE, "sha256"] == sha256sum(src)
