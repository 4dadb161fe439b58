"""Data stages: simulator, acquisition errors, QC, HVGs, annotation, splits and forget sets, and the
checks on a user's counts and on data files changed after they were written."""

import io
import logging
import os
import tarfile

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from scipy.io import mmwrite

from scunlearn import ScunlearnError
from scunlearn.data.acquire import PBMC33K_ARCHIVE, check_raw_counts, fetch_pbmc33k, read_user_file
from scunlearn.data.preprocess import quality_control, select_hvgs
from scunlearn.data.simulate import MT_GENES, simulate_counts
from scunlearn.data.splits import load_partition, make_forget_set, make_split, save_split
from scunlearn.io import write_h5ad
from tests.conftest import PRE_CFG

# ------------------------------------------------------------------ simulator

def test_simulator_is_deterministic_and_realistic(markers):
    a = simulate_counts(markers, n_cells=800, n_genes=400, seed=11)
    b = simulate_counts(markers, n_cells=800, n_genes=400, seed=11)
    c = simulate_counts(markers, n_cells=800, n_genes=400, seed=12)
    assert a.shape == (800, 400)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    assert (a.X != c.X).nnz > 0
    X = a.X.toarray()
    assert np.issubdtype(X.dtype, np.integer) and X.min() >= 0
    assert set(MT_GENES) <= set(a.var_names) and {"PPBP", "PF4"} <= set(a.var_names)
    types = a.obs["true_type"].value_counts(normalize=True)
    assert 0.005 <= types["Megakaryocyte"] <= 0.015  # the rare type, ~1%
    assert types.max() > 20 * types["Megakaryocyte"]  # sizes differ widely
    # overdispersed counts: variance above the mean within one type for a common gene
    t = a.obs["true_type"] == "T cell"
    g = X[t.values][:, np.argmax(X[t.values].mean(0))]
    assert g.var() > 1.5 * g.mean()
    # markers are up in their own type
    pf4 = X[:, list(a.var_names).index("PF4")]
    mk = (a.obs["true_type"] == "Megakaryocyte").values
    assert pf4[mk].mean() > 5 * pf4[~mk].mean()


# ------------------------------------------------------------------ QC, HVG, annotation

def test_qc_removes_the_low_quality_cells(raw):
    qc = quality_control(raw, PRE_CFG["min_genes"], PRE_CFG["max_mt_fraction"], PRE_CFG["min_cells_per_gene"])
    assert raw.obs["low_quality"].sum() > 0
    assert not qc.obs["low_quality"].any()
    good = (~raw.obs["low_quality"]).sum()
    assert qc.n_obs >= 0.99 * good  # healthy cells are kept


def test_hvgs_are_computed_on_raw_counts(raw):
    qc = quality_control(raw, 200, 0.1, 3)
    qc.layers["counts"] = qc.X.copy()
    expected = sc.pp.highly_variable_genes(qc.copy(), n_top_genes=200, flavor="seurat_v3", inplace=False)
    sc.pp.normalize_total(qc, target_sum=1e4)
    sc.pp.log1p(qc)  # X is now log data: HVGs must still come from the counts layer
    ours = select_hvgs(qc, 200)
    assert np.array_equal(ours, expected["highly_variable"].to_numpy())
    with pytest.warns(UserWarning, match="expects raw count data"):  # scanpy flags the reference bug
        on_log = sc.pp.highly_variable_genes(qc.copy(), n_top_genes=200, flavor="seurat_v3", inplace=False)
    assert not np.array_equal(ours, on_log["highly_variable"].to_numpy())  # the reference code's bug differs


def test_preprocess_keeps_counts_and_annotates_rare_cluster(processed, raw):
    assert processed.n_vars == PRE_CFG["n_hvg"]
    counts = processed.layers["counts"]
    assert np.allclose(counts.data, np.round(counts.data))
    assert processed.X.max() < 15  # log1p-normalised
    ct = processed.obs["cell_type"].astype(str)
    truth = raw.obs.loc[processed.obs_names, "true_type"].astype(str)
    assert (ct == truth).mean() > 0.95
    mk = ct == "Megakaryocyte"
    assert mk.sum() >= 10 and (truth[mk] == "Megakaryocyte").mean() > 0.9


def test_cluster_below_min_marker_score_is_unknown(markers, caplog):
    from scunlearn.data.preprocess import annotate_clusters

    rng = np.random.default_rng(0)
    mk = markers.groupby("cell_type")["gene"].apply(list)
    genes = sorted(set(markers["gene"]))
    # three clusters of 30 cells: B-cell markers high, Megakaryocyte markers high, neither
    X = rng.normal(1.0, 0.1, size=(90, len(genes)))
    col = {g: j for j, g in enumerate(genes)}
    X[:30, [col[g] for g in mk["B cell"]]] += 3
    X[30:60, [col[g] for g in mk["Megakaryocyte"]]] += 3
    X[60:] -= 0.5  # every marker below average: no type fits (best score negative)
    a = ad.AnnData(X=X.astype(np.float32))
    a.var_names = genes
    a.obs["leiden"] = pd.Categorical(np.repeat(["0", "1", "2"], 30))
    with caplog.at_level(logging.WARNING):
        labels = annotate_clusters(a, markers)  # the default threshold: cluster 2 scores below it
    assert labels.iloc[0] == "B cell" and labels.iloc[30] == "Megakaryocyte" and labels.iloc[60] == "unknown"
    assert "cluster 2 (30 cells) -> unknown" in caplog.text and "preprocess.min_marker_score" in caplog.text
    # a higher threshold turns a weakly-scoring cluster unknown too; a very low one labels everything
    assert set(annotate_clusters(a, markers, min_score=100.0)) == {"unknown"}
    assert "unknown" not in set(annotate_clusters(a, markers, min_score=-100.0))


# ------------------------------------------------------------------ splits and forget sets

def test_splits_are_disjoint_cover_and_deterministic(processed):
    s1 = make_split(processed.obs_names, 0.85, 0.5, seed=0)
    s2 = make_split(processed.obs_names, 0.85, 0.5, seed=0)
    s3 = make_split(processed.obs_names, 0.85, 0.5, seed=1)
    assert s1 == s2 and s1["train"] != s3["train"]
    parts = [set(s1[k]) for k in ("train", "validation", "audit")]
    assert sum(map(len, parts)) == processed.n_obs == len(set().union(*parts))
    assert abs(len(parts[0]) / processed.n_obs - 0.85) < 0.01
    assert s1["sizes"] == {k: len(s1[k]) for k in ("train", "validation", "audit")}


def test_structured_forget_set_is_rare_cluster_in_train(processed):
    split = make_split(processed.obs_names, 0.85, 0.5, seed=0)
    fs = make_forget_set(processed, split, {"kind": "cell_type", "cell_type": "Megakaryocyte"}, seed=0)
    mk = set(processed.obs_names[processed.obs["cell_type"] == "Megakaryocyte"])
    assert set(fs["forget"]) == mk & set(split["train"])
    assert fs["size"] == len(fs["forget"]) > 0
    sc_ = make_forget_set(processed, split, {"kind": "random", "n": 30}, seed=0)
    assert sc_["size"] == 30 and set(sc_["forget"]) <= set(split["train"])
    assert sc_ == make_forget_set(processed, split, {"kind": "random", "n": 30}, seed=0)


def test_forget_set_errors(processed):
    split = make_split(processed.obs_names, 0.85, 0.5, seed=0)
    with pytest.raises(ScunlearnError, match="does not exist"):
        make_forget_set(processed, split, {"kind": "cell_type", "cell_type": "Unicorn"}, 0)
    with pytest.raises(ScunlearnError, match="has only .* train cells, 500 asked"):
        make_forget_set(processed, split, {"kind": "cell_type", "cell_type": "Megakaryocyte", "n": 500}, 0)
    with pytest.raises(ScunlearnError, match="train has only"):
        make_forget_set(processed, split, {"kind": "random", "n": 10**6}, 0)
    with pytest.raises(ScunlearnError, match="not smaller than train"):
        make_forget_set(processed, split, {"kind": "random", "n": len(split["train"])}, 0)


def test_partition_checks_barcodes(processed, tmp_path):
    split = make_split(processed.obs_names, 0.85, 0.5, seed=0)
    save_split(split, tmp_path / "split.json")
    fs = make_forget_set(processed, split, {"kind": "random", "n": 20}, 0)
    save_split(fs, tmp_path / "f.json")
    part = load_partition(processed, tmp_path / "split.json", tmp_path / "f.json")
    assert len(part.retain) == len(part.train) - 20
    assert not set(part.retain) & set(part.forget)
    bad = dict(split, audit=split["audit"] + ["NOT-A-CELL"])
    save_split(bad, tmp_path / "bad.json")
    with pytest.raises(ScunlearnError, match="bad.json: 1 audit barcodes are not in the data"):
        load_partition(processed, tmp_path / "bad.json")


def test_unknown_cell_type_lists_types_and_says_they_are_data_derived(processed, tmp_path):
    from scunlearn.data.splits import make_split
    from scunlearn.io import write_json
    from scunlearn.stages.data import stage_forget

    adata = tmp_path / "adata.h5ad"
    write_h5ad(processed, adata)
    write_json(make_split(processed.obs_names, 0.85, 0.5, seed=0), tmp_path / "split.json")
    with pytest.raises(ScunlearnError) as e:
        stage_forget({"adata": str(adata), "split": str(tmp_path / "split.json")}, {"forget": str(tmp_path / "f.json")},
                     {"name": "rare", "spec": {"kind": "cell_type", "cell_type": "Unicorn"}, "seed": 0}, 1)
    msg = str(e.value)
    assert "forget_sets.rare" in msg and "'Unicorn' does not exist" in msg
    assert "'Megakaryocyte'" in msg and "'B cell'" in msg  # the available types
    assert "data-derived" in msg and "only after preprocessing" in msg
    assert not (tmp_path / "f.json").exists()


def test_random_forget_sets_with_the_same_n_draw_different_cells(processed, tmp_path):
    """Two random sets of the same n are different draws: the set's name seeds the draw, not only n and the seed."""
    from scunlearn.data.splits import forget_set_rng
    from scunlearn.io import read_json, write_json
    from scunlearn.stages.data import stage_forget

    adata = tmp_path / "adata.h5ad"
    write_h5ad(processed, adata)
    write_json(make_split(processed.obs_names, 0.85, 0.5, seed=0), tmp_path / "split.json")

    def draw(name, seed=0):
        out = tmp_path / f"{name}-{seed}.json"
        stage_forget({"adata": str(adata), "split": str(tmp_path / "split.json")}, {"forget": str(out)},
                     {"name": name, "spec": {"kind": "random", "n": 30}, "seed": seed}, 1)
        return read_json(out)["forget"]

    a, b = draw("scattered"), draw("scattered2")
    assert len(a) == len(b) == 30 and set(a) != set(b)
    assert draw("scattered") == a  # deterministic
    assert draw("scattered", seed=1) != a  # and still seeded
    # a stable hash of the name (CRC-32), never Python's salted hash(): the same in every process
    assert forget_set_rng(0, "scattered").integers(1 << 30) == np.random.default_rng([0, 3384509379]).integers(1 << 30)


# ------------------------------------------------------------------ bad input

def _h5ad(tmp_path, X, name="user.h5ad"):
    a = ad.AnnData(X=np.asarray(X, dtype=np.float32))
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    a.var_names = [f"g{j}" for j in range(a.n_vars)]
    p = tmp_path / name
    write_h5ad(a, p)
    return p


@pytest.mark.parametrize("X, message", [
    ([[1.0, 2.5], [0.0, 1.0]], "non-integer values"),
    ([[1.0, -2.0], [0.0, 1.0]], "negative values"),
    ([[1.0, np.nan], [0.0, 1.0]], "NaN"),
])
def test_user_matrix_must_be_raw_counts(tmp_path, X, message):
    p = _h5ad(tmp_path, X)
    with pytest.raises(ScunlearnError, match=message) as e:
        read_user_file(p, "h5ad")
    assert str(p) in str(e.value)


def test_user_file_unreadable_or_missing(tmp_path):
    p = tmp_path / "garbage.h5ad"
    p.write_bytes(b"this is not hdf5")
    with pytest.raises(ScunlearnError, match=r"garbage.h5ad: cannot read as h5ad"):
        read_user_file(p, "h5ad")
    with pytest.raises(ScunlearnError, match="nope.h5ad: dataset file not found"):
        read_user_file(tmp_path / "nope.h5ad", "h5ad")


def test_user_h5ad_counts_layer_is_used(tmp_path):
    a = ad.AnnData(X=np.log1p(np.ones((3, 2), dtype=np.float32) * 4))
    a.layers["counts"] = sp.csr_matrix(np.full((3, 2), 4.0, dtype=np.float32))
    write_h5ad(a, tmp_path / "x.h5ad")
    out = read_user_file(tmp_path / "x.h5ad", "h5ad")
    assert out.X.toarray().max() == 4.0


def test_check_raw_counts_accepts_counts():
    a = ad.AnnData(X=sp.csr_matrix(np.array([[0, 3], [5, 1]], dtype=np.float32)))
    check_raw_counts(a, "ok")


# ------------------------------------------------------------------ PBMC-33k download path (no network)

def _checksums(tmp_path, sha="", n_cells=33148, n_genes=32738):
    p = tmp_path / "checksums.tsv"
    pd.DataFrame([{"file": PBMC33K_ARCHIVE, "url": "x", "sha256": sha, "n_cells": n_cells, "n_genes": n_genes}]) \
        .to_csv(p, sep="\t", index=False)
    return p


def test_offline_download_says_where_to_put_the_archive(tmp_path):
    with pytest.raises(ScunlearnError) as e:
        fetch_pbmc33k(tmp_path / "res", _checksums(tmp_path), url=(tmp_path / "no-such-file").as_uri())
    msg = str(e.value)
    assert "download failed" in msg and "place the archive at" in msg
    assert str(tmp_path / "res" / PBMC33K_ARCHIVE) in msg


def _tiny_10x_archive(path, n_cells=6, n_genes=4):
    """A v1-layout 10x archive (filtered_gene_bc_matrices/hg19/{matrix.mtx,genes.tsv,barcodes.tsv})."""
    rng = np.random.default_rng(0)
    files = {}
    buf = io.BytesIO()
    mmwrite(buf, sp.coo_matrix(rng.integers(0, 5, size=(n_genes, n_cells))))
    files["matrix.mtx"] = buf.getvalue()
    files["genes.tsv"] = "".join(f"ENSG{i}\tGENE{i}\n" for i in range(n_genes)).encode()
    files["barcodes.tsv"] = "".join(f"AAAC{i}-1\n" for i in range(n_cells)).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"filtered_gene_bc_matrices/hg19/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_download_from_local_url_verifies_checksum_and_shape(tmp_path):
    from scunlearn.io import sha256sum

    src = tmp_path / "mirror.tar.gz"
    _tiny_10x_archive(src)
    res = tmp_path / "res"
    ok = fetch_pbmc33k(res, _checksums(tmp_path, sha256sum(src), 6, 4), url=src.as_uri())
    assert ok.shape == (6, 4) and ok.uns["source_sha256"] == sha256sum(src)
    # a wrong pinned checksum is refused, with the manual instructions
    with pytest.raises(ScunlearnError, match="checksum mismatch"):
        fetch_pbmc33k(res, _checksums(tmp_path, "0" * 64, 6, 4), url=src.as_uri())
    # an archive of the wrong dataset is refused by its shape
    with pytest.raises(ScunlearnError, match="holds 6 cells x 4 genes, expected 33148 x 32738"):
        fetch_pbmc33k(res, _checksums(tmp_path), url=src.as_uri())


def test_simulate_too_few_genes_is_a_clear_config_error(markers):
    from scunlearn import ScunlearnError
    from scunlearn.data.simulate import simulate_counts

    with pytest.raises(ScunlearnError, match=r"dataset.simulate.n_genes=40 is too small"):
        simulate_counts(markers, n_cells=100, n_genes=40, seed=0)


def test_read_cells_reads_what_anndata_reads(processed, tmp_path):
    """The light h5py reader of the model stages = AnnData's reader on a preprocessed file: counts,
    names, obs (categoricals included), obsm, uns scalars; unknown encodings go through AnnData."""
    from scunlearn.io import CellData, read_cells

    path = tmp_path / "adata.h5ad"
    processed = processed.copy()
    processed.uns["data_sha256"] = "0123abcd"
    write_h5ad(processed, path)
    ref = ad.read_h5ad(path)
    got = read_cells(path)
    assert isinstance(got, CellData) and got.shape == ref.shape
    assert list(got.obs_names) == list(ref.obs_names) and list(got.var_names) == list(ref.var_names)
    assert (got.layers["counts"] != ref.layers["counts"]).nnz == 0
    assert (got.X != ref.X).nnz == 0
    pd.testing.assert_frame_equal(got.obs, ref.obs, check_index_type=False)
    assert isinstance(got.obs["cell_type"].dtype, pd.CategoricalDtype)
    np.testing.assert_array_equal(got.obsm["X_pca"], ref.obsm["X_pca"])
    assert got.uns["data_sha256"] == ref.uns["data_sha256"]
    # it serves the stages' readers: the partition and the count tensor are AnnData's
    from scunlearn.vae.train import counts_tensor

    split = make_split(processed.obs_names, 0.6, 0.25, seed=0)
    save_split(split, tmp_path / "split.json")
    pg, pr = load_partition(got, tmp_path / "split.json"), load_partition(ref, tmp_path / "split.json")
    for k in ("train", "validation", "audit", "retain"):
        np.testing.assert_array_equal(getattr(pg, k), getattr(pr, k))
    assert bool((counts_tensor(got) == counts_tensor(ref)).all())
    # an encoding it does not know (a nullable integer column): read by AnnData instead
    odd = processed.copy()
    odd.obs["n_nullable"] = pd.array(np.arange(odd.n_obs), dtype="Int64")
    write_h5ad(odd, tmp_path / "odd.h5ad")
    back = read_cells(tmp_path / "odd.h5ad")
    assert isinstance(back, ad.AnnData) and back.obs["n_nullable"].dtype == "Int64"
    with pytest.raises(ScunlearnError, match="nope.h5ad: file not found"):
        read_cells(tmp_path / "nope.h5ad")
    from scunlearn.io import write_with_digest

    write_with_digest(tmp_path / "bad.h5ad", lambda p: p.write_bytes(b"not hdf5"))  # recorded, yet no h5ad
    with pytest.raises(ScunlearnError, match="bad.h5ad: unreadable h5ad"):
        read_cells(tmp_path / "bad.h5ad")


def test_nullable_strings_are_written_as_plain_strings(tmp_path):
    """pandas string columns and names (pandas 3's default `str`, or `string` under pandas 2) go through
    the project's writer, which AnnData alone refuses (allow_write_nullable_strings); nothing is lost."""
    from scunlearn.io import read_cells

    names = pd.Index([f"AAAC{i}-1" for i in range(4)], dtype="string", name="barcode")
    obs = pd.DataFrame({
        "sample": pd.array(["s1", "s1", "s2", "s2"], dtype="string"),
        "note": pd.array(["a", None, "b", "a"], dtype="string"),  # a missing string: kept as a missing value
        "cell_type": pd.Categorical(pd.array(["B", "T", "T", "B"], dtype="string")),
        "n_genes": [5, 6, 7, 8],
    }, index=names)
    var = pd.DataFrame({"gene_ids": pd.array(["E0", "E1", "E2"], dtype="string")},
                       index=pd.Index(["G0", "G1", "G2"], dtype="string"))
    a = ad.AnnData(X=sp.csr_matrix(np.arange(12, dtype=np.float32).reshape(4, 3)), obs=obs, var=var)
    before = (a.obs.copy(), a.var.copy())
    write_h5ad(a, tmp_path / "s.h5ad")
    pd.testing.assert_frame_equal(a.obs, before[0])  # the caller's AnnData is left as it was
    pd.testing.assert_frame_equal(a.var, before[1])
    for back in (ad.read_h5ad(tmp_path / "s.h5ad"), read_cells(tmp_path / "s.h5ad")):
        assert list(back.obs_names) == list(names) and list(back.var_names) == ["G0", "G1", "G2"]
        assert back.obs.index.name == "barcode"
        assert back.obs["sample"].tolist() == ["s1", "s1", "s2", "s2"]
        assert back.obs["note"].iloc[[0, 2, 3]].tolist() == ["a", "b", "a"] and pd.isna(back.obs["note"].iloc[1])
        assert back.obs["cell_type"].tolist() == ["B", "T", "T", "B"]
        assert back.obs["n_genes"].tolist() == [5, 6, 7, 8]
    assert ad.read_h5ad(tmp_path / "s.h5ad").var["gene_ids"].tolist() == ["E0", "E1", "E2"]
    # a view is written as its cells, the view untouched
    write_h5ad(a[:2], tmp_path / "v.h5ad")
    assert list(ad.read_h5ad(tmp_path / "v.h5ad").obs_names) == list(names[:2])


# ------------------------------------------------------------------ counts that look normalised, damaged files

def _rounded(X, target_sum=1e4, log=True):
    """Counts normalised per cell (and log1p'd), then rounded to integers: normalised data that pass as counts."""
    X = sp.csr_matrix(X, dtype=np.float64)
    X = sp.diags(target_sum / np.asarray(X.sum(1)).ravel()) @ X
    if log:
        X.data = np.log1p(X.data)
    X.data = np.round(X.data)
    X.eliminate_zeros()
    return X.astype(np.float32)


def _write_h5ad(path, X, raw=None, counts=None):
    """A user's h5ad, written by AnnData itself (object-dtype names: pandas 3 would make them `str`,
    which AnnData refuses to write by default)."""
    a = ad.AnnData(X=sp.csr_matrix(X))
    a.obs_names = pd.Index([f"c{i}" for i in range(a.n_obs)], dtype=object)
    a.var_names = pd.Index([f"g{j}" for j in range(a.n_vars)], dtype=object)
    if counts is not None:
        a.layers["counts"] = sp.csr_matrix(counts)
    if raw is not None:
        r = ad.AnnData(X=sp.csr_matrix(raw), obs=a.obs.copy(), var=a.var.copy())
        a.raw = r
    a.write_h5ad(path)
    return path


@pytest.mark.parametrize("log, seen", [
    (True, "the largest value is 8 over"),  # log1p of 1e4-normalised data, rounded: values 0-8
    (False, "per-cell totals are nearly constant"),  # normalised to 1e4, rounded: totals ~1e4 each
])
def test_rounded_normalised_counts_are_refused_with_numbers(raw, tmp_path, log, seen):
    """Normalised data rounded to integers pass the integer check; the count statistics still refuse them."""
    p = _write_h5ad(tmp_path / "rounded.h5ad", _rounded(raw.X, log=log))
    with pytest.raises(ScunlearnError) as e:
        read_user_file(p, "h5ad")
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and "in the matrix X" in msg and seen in msg and "look normalised" in msg
    assert "give the unnormalised UMI counts" in msg and "dataset.accept_normalised_looking: true" in msg


def test_normalised_looking_counts_accepted_knowingly(raw, tmp_path, caplog):
    import logging

    p = _write_h5ad(tmp_path / "rounded.h5ad", _rounded(raw.X))
    with caplog.at_level(logging.INFO):
        out = read_user_file(p, "h5ad", accept_normalised=True)
    assert out.shape == raw.shape
    assert "looks normalised" in caplog.text
    assert "accepted because dataset.accept_normalised_looking is true" in caplog.text
    # the switch is in the schema (default false, described) and in both READMEs
    import yaml

    from tests.conftest import ROOT

    schema = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    key = schema["properties"]["dataset"]["properties"]["accept_normalised_looking"]
    assert key["default"] is False and "normalised" in key["description"]
    assert "`accept_normalised_looking`" in (ROOT / "config/README.md").read_text()
    assert "accept_normalised_looking" in (ROOT / "README.md").read_text()


def test_counts_check_passes_simulated_and_pbmc_like_counts(raw, markers):
    """The demo's simulated data, the tests' data and PBMC-like counts (library sizes varying several-fold,
    maxima in the hundreds) are raw counts; so are small matrices, about which the check says nothing."""
    from scunlearn.data.acquire import acquire, counts_stats

    check_raw_counts(raw, "simulated")
    for sim in ({"n_cells": 5000, "n_genes": 1200, "seed": 7}, {"n_cells": 600, "n_genes": 300, "seed": 5}):
        acquire({"source": "simulate", "simulate": sim}, markers, "", "")
    rng = np.random.default_rng(0)
    lib = rng.lognormal(np.log(2500), 0.6, size=2000)  # PBMC-like: 5%-95% library sizes ~ 900-6700
    p = rng.dirichlet(np.full(500, 0.05))
    X = sp.csr_matrix(rng.poisson(np.outer(lib, p)).astype(np.float32))
    st = counts_stats(X)
    assert st["cv"] > 0.5 and st["max"] > 100
    check_raw_counts(ad.AnnData(X), "pbmc-like")
    check_raw_counts(ad.AnnData(sp.csr_matrix(np.full((40, 5), 3.0, dtype=np.float32))), "tiny")  # 40 cells


def test_counts_in_raw_are_read_and_the_log_says_so(raw, tmp_path, caplog):
    """A non-integer X with counts in .raw was refused, and the message advised adata.raw, which was never read."""
    import logging

    sub = raw[:300].copy()
    logX = sub.X.astype(np.float32).copy()
    logX.data = np.log1p(logX.data)
    p = _write_h5ad(tmp_path / "withraw.h5ad", logX, raw=sub.X)
    with caplog.at_level(logging.INFO):
        out = read_user_file(p, "h5ad")
    assert (out.X != sub.X).nnz == 0
    assert f"{p}: raw counts read from .raw" in caplog.text
    caplog.clear()
    q = _write_h5ad(tmp_path / "counts.h5ad", sub.X)
    with caplog.at_level(logging.INFO):
        read_user_file(q, "h5ad")
    assert f"{q}: raw counts read from X" in caplog.text


def test_refusing_X_says_which_matrices_were_read(tmp_path):
    logX = np.log1p(np.arange(12, dtype=np.float32).reshape(4, 3))
    p = _write_h5ad(tmp_path / "nolayer.h5ad", logX)
    with pytest.raises(ScunlearnError) as e:
        read_user_file(p, "h5ad")
    msg = str(e.value)
    assert "non-integer values in the matrix X" in msg
    assert "X was read because the file has no layers['counts'] and no .raw" in msg
    assert "accept_normalised_looking" not in msg  # non-integers are never accepted: the switch is not offered
    q = _write_h5ad(tmp_path / "badraw.h5ad", logX, raw=logX)
    with pytest.raises(ScunlearnError) as e:
        read_user_file(q, "h5ad")
    msg = str(e.value)
    assert "in the matrix X" in msg and "in the matrix .raw" in msg and "neither X nor .raw holds raw counts" in msg


def test_non_integer_counts_layer_is_named_as_the_matrix_read(tmp_path):
    """A non-integer layers['counts'] was refused without saying so, advising to add a counts layer."""
    counts = np.array([[1.0, 2.5], [0.0, 1.0], [3.0, 1.0]], dtype=np.float32)
    p = _write_h5ad(tmp_path / "layer.h5ad", np.ones((3, 2), dtype=np.float32), counts=counts)
    with pytest.raises(ScunlearnError) as e:
        read_user_file(p, "h5ad")
    msg = str(e.value)
    assert msg.startswith(f"{p}: non-integer values in the matrix layers['counts'] (e.g. 2.5)")
    assert "read whenever the file has one" in msg and "remove the layer" in msg
    assert "counts' layer)" not in msg and "or a 'counts' layer" not in msg  # no advice to add the layer it read


def test_truncated_h5ad_says_to_delete_it(processed, tmp_path):
    """A truncated data/adata.h5ad was reported unreadable without saying to delete it and rerun."""
    from scunlearn.io import read_adata, read_cells, sha256sum, write_h5ad

    p = tmp_path / "adata.h5ad"
    write_h5ad(processed, p)
    p.write_bytes(p.read_bytes()[:4096])
    # its digest recorded as truncated (an interrupted copy of file and record): the reader itself notices
    (tmp_path / "adata.h5ad.sha256").write_text(f"{sha256sum(p)}  adata.h5ad\n")
    for read in (read_cells, read_adata):
        with pytest.raises(ScunlearnError) as e:
            read(p)
        msg = str(e.value)
        assert msg.startswith(f"{p}: unreadable h5ad") and "delete it and rerun snakemake" in msg


def test_changed_h5ad_is_refused_by_every_reader(processed, tmp_path):
    from scunlearn.io import read_adata, read_cells, write_h5ad
    from scunlearn.stages.data import stage_split

    p = tmp_path / "adata.h5ad"
    write_h5ad(processed, p)
    read_cells(p)
    st = p.stat()
    write_h5ad(processed[:50].copy(), tmp_path / "other.h5ad")
    p.write_bytes((tmp_path / "other.h5ad").read_bytes())  # edited in place, the old time stamp put back
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    for read in (read_cells, read_adata,
                 lambda f: stage_split({"adata": str(f)}, {"split": str(tmp_path / "s.json")},
                                       {"splits": {"train_fraction": 0.8, "validation_fraction": 0.5}, "seed": 0}, 1)):
        with pytest.raises(ScunlearnError, match="the file changed since it was written"):
            read(p)
    assert not (tmp_path / "s.json").exists()

