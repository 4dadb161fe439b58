"""A user's own data: their obs labels as the study's cell types (preprocess.cell_type_key), kept from their h5ad
through acquire and preprocessing, and forget sets by an obs column (kind obs: a donor, sample, batch)."""

import logging

import numpy as np
import pandas as pd
import pytest

from scunlearn import ScunlearnError
from scunlearn.data.labels import SCORES_KEY
from scunlearn.data.preprocess import preprocess
from scunlearn.data.simulate import simulate_counts
from scunlearn.data.splits import make_forget_set, make_split
from scunlearn.io import read_adata, read_json, write_h5ad, write_json
from scunlearn.stages.data import stage_acquire, stage_forget, stage_preprocess, stage_split
from tests.conftest import PRE_CFG

CFG = dict(PRE_CFG, min_genes=50, n_hvg=200, n_pcs=10, neighbors_pcs=10)
#: a marker table none of whose genes is in any data set here
NO_GENES = pd.DataFrame({"cell_type": ["Unicorn", "Unicorn"], "gene": ["NOT-A-GENE", "NOR-THIS"]})


@pytest.fixture(scope="module")
def own(markers):
    """Raw counts with the user's labels, unrelated to any marker type's name ('typeA' / 'typeB', a pandas
    string column, one cell unlabelled), a donor per cell and 25 samples."""
    raw = simulate_counts(markers, n_cells=700, n_genes=300, cell_types={"T cell": 0.5, "B cell": 0.5}, seed=2)
    truth = raw.obs["true_type"].astype(str).to_numpy()
    labels = pd.array(np.where(truth == "B cell", "typeB", "typeA"), dtype="string")
    labels[5] = pd.NA
    raw.obs["cell_type"] = labels
    raw.obs["donor"] = [f"D{i % 3 + 1}" for i in range(raw.n_obs)]
    raw.obs["sample"] = pd.Categorical([f"S{i % 25:02d}" for i in range(raw.n_obs)])
    return raw


def _acquire_and_preprocess(own, tmp_path, markers: pd.DataFrame, key="cell_type"):
    """The user's h5ad through the acquire and preprocess stages, as the workflow runs them; the h5ad read back."""
    user = tmp_path / "mine.h5ad"
    write_h5ad(own, user)
    markers_path = tmp_path / "markers.tsv"
    markers.to_csv(markers_path, sep="\t", index=False)
    raw = tmp_path / "raw.h5ad"
    stage_acquire({"markers": str(markers_path)}, {"raw": str(raw)},
                  {"dataset": {"source": "h5ad", "path": str(user)}, "resources_dir": "", "checksums": ""}, 1)
    out = tmp_path / "adata.h5ad"
    stage_preprocess({"raw": str(raw), "markers": str(markers_path)}, {"adata": str(out)},
                     {"preprocess": dict(CFG, cell_type_key=key), "seed": 0}, 1)
    return out, read_adata(out)


def test_own_labels_are_the_cell_types_even_when_no_marker_gene_is_in_the_data(own, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        _, adata = _acquire_and_preprocess(own, tmp_path, NO_GENES)
    assert 0 < adata.n_obs < own.n_obs  # QC removed some cells; the labels of the rest are kept
    expected = own.obs["cell_type"].astype(object).where(own.obs["cell_type"].notna(), "unknown")
    assert adata.obs["cell_type"].astype(str).tolist() == expected.loc[adata.obs_names].astype(str).tolist()
    assert set(adata.obs["cell_type"].astype(str)) == {"typeA", "typeB"} | ({"unknown"} & set(adata.obs["cell_type"]))
    assert adata.uns["cell_type_source"] == "obs['cell_type']"
    # no marker labels: skipped, and said so; the obs columns of the user's file reach the preprocessed data
    assert "marker_cell_type" not in adata.obs and SCORES_KEY not in adata.uns
    assert "leiden" in adata.obs and list(adata.obs["donor"]) == list(own.obs.loc[adata.obs_names, "donor"])
    assert "marker labels skipped" in caplog.text and "the data's own labels obs['cell_type']" in caplog.text


def test_marker_labels_go_beside_the_own_labels_when_the_table_fits(own, markers):
    adata = preprocess(own.copy(), dict(CFG, cell_type_key="cell_type"), markers, seed=0)
    assert set(adata.obs["cell_type"].astype(str)) <= {"typeA", "typeB", "unknown"}
    assert {"T cell", "B cell"} <= set(adata.obs["marker_cell_type"].astype(str))
    # the marker scores describe the marker labels, not the study's cell types
    assert "marker_cell_type_scores" in adata.uns and SCORES_KEY not in adata.uns
    # without the key: the marker labels, as always
    assert preprocess(own.copy(), dict(CFG), markers, seed=0).uns["cell_type_source"] == "markers"


def test_a_missing_cell_type_key_names_the_key_the_file_and_the_columns(own, tmp_path):
    with pytest.raises(ScunlearnError) as e:
        _acquire_and_preprocess(own, tmp_path, NO_GENES, key="celltype")
    msg = str(e.value)
    assert "preprocess.cell_type_key 'celltype'" in msg and str(tmp_path / "mine.h5ad") in msg
    assert "'cell_type'" in msg and "'donor'" in msg and "'sample'" in msg


def test_own_labels_are_never_refused_as_weak_marker_labels(own, markers):
    """With the data's own labels, a cell_type set is taken as labelled, whatever marker scores say."""
    adata = preprocess(own.copy(), dict(CFG), markers, seed=0)  # marker labels: 'B cell' etc.
    adata.uns[SCORES_KEY] = dict(adata.uns[SCORES_KEY], min_marker_score=99.0)  # every cluster now weak
    split = make_split(adata.obs_names, 0.6, 0.25, seed=0)
    spec = {"kind": "cell_type", "cell_type": "B cell"}
    with pytest.raises(ScunlearnError, match="too weakly marked"):
        make_forget_set(adata, split, spec, 0, "b")
    adata.uns["cell_type_source"] = "obs['cell_type']"  # the same labels, now the user's own
    fs = make_forget_set(adata, split, spec, 0, "b")
    b = adata.obs_names[adata.obs["cell_type"].astype(str) == "B cell"]
    assert fs["forget"] == sorted(set(b) & set(split["train"]))


def test_an_obs_forget_set_takes_exactly_that_donors_train_cells(own, tmp_path):
    path, adata = _acquire_and_preprocess(own, tmp_path, NO_GENES)
    stage_split({"adata": str(path)}, {"split": str(tmp_path / "split.json")},
                {"splits": {"train_fraction": 0.6, "validation_fraction": 0.25}, "seed": 0}, 1)
    split = read_json(tmp_path / "split.json")
    out = tmp_path / "donor.json"
    stage_forget({"adata": str(path), "split": str(tmp_path / "split.json")}, {"forget": str(out)},
                 {"name": "donor1", "spec": {"kind": "obs", "key": "donor", "values": ["D1"]}, "seed": 0}, 1)
    fs = read_json(out)
    d1 = adata.obs_names[adata.obs["donor"].astype(str) == "D1"]
    assert fs["forget"] == sorted(set(d1) & set(split["train"])) and fs["size"] > 50
    # two donors, and n of them at random
    two = make_forget_set(adata, split, {"kind": "obs", "key": "donor", "values": ["D1", "D3"], "n": 40}, 0, "x")
    assert two["size"] == 40 and set(adata.obs.loc[two["forget"], "donor"]) <= {"D1", "D3"}
    with pytest.raises(ScunlearnError, match=r"has \d+ train cells, fewer than min_size=100000"):
        make_forget_set(adata, split, {"kind": "obs", "key": "donor", "values": ["D1"], "min_size": 100000}, 0)


def test_an_absent_obs_value_or_column_lists_what_the_data_holds(own, tmp_path):
    adata = own.copy()
    split = make_split(adata.obs_names, 0.6, 0.25, seed=0)
    path = tmp_path / "adata.h5ad"
    write_h5ad(adata, path)
    write_json(split, tmp_path / "split.json")

    def forget(spec):
        with pytest.raises(ScunlearnError) as e:
            stage_forget({"adata": str(path), "split": str(tmp_path / "split.json")},
                         {"forget": str(tmp_path / "f.json")}, {"name": "mine", "spec": spec, "seed": 0}, 1)
        return str(e.value)

    msg = forget({"kind": "obs", "key": "donor", "values": ["D9"]})
    assert "forget_sets.mine" in msg and "'D9' not found in obs['donor']" in msg
    assert "3 values in obs['donor']" in msg and "'D1' (" in msg and "'D3' (" in msg
    # many values: at most 20 shown, with the count
    msg = forget({"kind": "obs", "key": "sample", "values": ["S99"]})
    assert "25 values in obs['sample']" in msg and "'S19'" in msg and "'S20'" not in msg and "(5 more)" in msg
    msg = forget({"kind": "obs", "key": "patient", "values": ["P1"]})
    assert "obs column 'patient' is not in the data" in msg and "'donor'" in msg and "'sample'" in msg
    assert not (tmp_path / "f.json").exists()


def test_an_obs_value_without_unseen_cells_is_refused(own):
    """The audit compares the forgotten cells with unseen cells of their group: a donor all in train is refused."""
    adata = own.copy()
    split = make_split(adata.obs_names, 0.6, 0.25, seed=0)
    d3 = set(adata.obs_names[adata.obs["donor"] == "D3"])
    moved = [b for b in split["audit"] if b in d3]
    split = dict(split, train=sorted(split["train"] + moved), audit=[b for b in split["audit"] if b not in d3])
    with pytest.raises(ScunlearnError, match=r"'D3' of obs\['donor'\] has no cell in the audit split"):
        make_forget_set(adata, split, {"kind": "obs", "key": "donor", "values": ["D3"]}, 0)
    assert make_forget_set(adata, split, {"kind": "obs", "key": "donor", "values": ["D2"]}, 0)["size"] > 0
