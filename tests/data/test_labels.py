"""How sure the cell-type labels are: the measured default of preprocess.min_marker_score, the per-cluster
record in uns, the refusal of a cell_type forget set on weak labels and its override, the report's warning."""

import json
import logging
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from scunlearn import ScunlearnError
from scunlearn.data.labels import MIN_MARKER_SCORE, SCORE_COLUMNS, SCORES_KEY, scores_record, scores_table
from scunlearn.data.preprocess import annotate_clusters, preprocess, score_clusters
from scunlearn.data.simulate import simulate_counts
from scunlearn.data.splits import make_forget_set, make_split
from scunlearn.io import read_adata, write_h5ad, write_json
from scunlearn.report.html import render_cell_type_labels
from tests.conftest import PRE_CFG, ROOT


@pytest.fixture(scope="module")
def one_type(markers):
    """Simulated B cells only, preprocessed: no type's markers stand out, so every label would be noise."""
    raw = simulate_counts(markers, n_cells=600, n_genes=1000, cell_types={"B cell": 1.0}, seed=1)
    return preprocess(raw, dict(PRE_CFG), markers, seed=0)


def _best_types(adata):
    """Each type that is some cluster's best-scoring type, with its clusters' rows of the record."""
    table = scores_table(adata.uns)
    return {t: g for t, g in table.groupby("best_type")}


def test_default_threshold_keeps_multi_type_labels_and_drops_one_type_noise(processed, one_type, raw, markers):
    schema = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    assert schema["properties"]["preprocess"]["properties"]["min_marker_score"]["default"] == MIN_MARKER_SCORE
    multi, noise = scores_table(processed.uns), scores_table(one_type.uns)
    # the tiny study's data (the processed fixture): every cluster is far above the default, none unknown
    assert multi["best_score"].min() > 2 * MIN_MARKER_SCORE and (multi["label"] == multi["best_type"]).all()
    at_zero = annotate_clusters(processed, markers, min_score=0.0)  # the labels before the default was raised
    assert processed.obs["cell_type"].astype(str).equals(at_zero.astype(str))
    truth = raw.obs.loc[processed.obs_names, "true_type"].astype(str)
    assert (processed.obs["cell_type"].astype(str) == truth).mean() > 0.95
    # the one-type data: every cluster's best score is noise, below the default, so no type is named
    assert noise["best_score"].max() < MIN_MARKER_SCORE / 2
    assert set(one_type.obs["cell_type"].astype(str)) == {"unknown"}


def test_scores_are_recorded_in_uns_and_survive_h5ad(processed, tmp_path):
    rec = processed.uns[SCORES_KEY]
    assert rec["min_marker_score"] == MIN_MARKER_SCORE and set(SCORE_COLUMNS) <= set(rec)
    path = tmp_path / "adata.h5ad"
    write_h5ad(processed, path)
    table = scores_table(read_adata(path).uns)
    assert table.equals(scores_table(processed.uns)) and list(table.columns) == list(SCORE_COLUMNS)
    assert table["n_cells"].sum() == processed.n_obs
    by_cell = processed.obs["leiden"].astype(str).map(dict(zip(table["cluster"], table["label"])))
    assert by_cell.equals(processed.obs["cell_type"].astype(str))
    mk = table[table["label"] == "Megakaryocyte"].iloc[0]
    assert mk["best_score"] > mk["runner_up_score"] and mk["runner_up_type"] != "Megakaryocyte"


def test_cell_type_forget_set_on_one_type_data_is_refused_naming_scores(one_type, tmp_path, caplog):
    from scunlearn.stages.data import stage_forget

    path, split_path = tmp_path / "adata.h5ad", tmp_path / "split.json"
    write_h5ad(one_type, path)
    split = make_split(one_type.obs_names, 0.85, 0.5, seed=0)
    write_json(split, split_path)
    for cell_type, clusters in _best_types(one_type).items():
        params = {"spec": {"kind": "cell_type", "cell_type": cell_type}, "seed": 0, "name": "structured"}
        with pytest.raises(ScunlearnError) as e:
            stage_forget({"adata": str(path), "split": str(split_path)}, {"forget": str(tmp_path / "f.json")},
                         params, 1)
        msg = str(e.value)
        assert f"cell_type '{cell_type}'" in msg and "preprocess.min_marker_score = 0.3." in msg
        assert "forget_sets.structured.accept_weak_labels: true" in msg
        for r in clusters.itertuples():
            assert f"cluster {r.cluster} ({r.n_cells} cells, labelled 'unknown'): score {r.best_score:.3f}" in msg
        # the override takes every cluster whose best type it is, and says so in the log
        params["spec"]["accept_weak_labels"] = True
        with caplog.at_level(logging.WARNING):
            stage_forget({"adata": str(path), "split": str(split_path)}, {"forget": str(tmp_path / "f.json")},
                         params, 1)
        assert "taken with weak labels" in caplog.text
        fs = json.loads(Path(tmp_path / "f.json").read_text())
        cells = one_type.obs_names[one_type.obs["leiden"].astype(str).isin(clusters["cluster"])]
        assert set(fs["forget"]) == set(cells) & set(split["train"])


def _labelled(best_scores, best_types, threshold=MIN_MARKER_SCORE):
    """A small AnnData whose clusters (20 cells each) carry the given best types and scores in the record."""
    n = len(best_scores)
    table = pd.DataFrame({
        "cluster": [str(i) for i in range(n)], "n_cells": [20] * n, "best_type": best_types,
        "best_score": best_scores, "runner_up_type": ["NK cell"] * n, "runner_up_score": [-0.1] * n,
        "label": [t if s >= threshold else "unknown" for t, s in zip(best_types, best_scores)], "weak": [False] * n})
    a = ad.AnnData(X=np.zeros((20 * n, 2), dtype=np.float32))
    a.obs_names = [f"c{i}" for i in range(20 * n)]
    a.obs["leiden"] = pd.Categorical(np.repeat(table["cluster"], 20))
    a.obs["cell_type"] = pd.Categorical(np.repeat(table["label"], 20))
    a.uns[SCORES_KEY] = scores_record(table, threshold)
    return a


def test_a_type_with_one_cluster_below_the_threshold_is_refused():
    a = _labelled([1.2, 0.12, 2.0], ["Megakaryocyte", "Megakaryocyte", "B cell"])
    split = make_split(a.obs_names, 0.85, 0.5, seed=0)
    spec = {"kind": "cell_type", "cell_type": "Megakaryocyte"}
    with pytest.raises(ScunlearnError, match=re.escape("1 of its clusters score below it")) as e:
        make_forget_set(a, split, spec, 0, "structured")
    assert "cluster 0 (20 cells, labelled 'Megakaryocyte'): score 1.200" in str(e.value)
    assert "cluster 1 (20 cells, labelled 'unknown'): score 0.120" in str(e.value)
    fs = make_forget_set(a, split, dict(spec, accept_weak_labels=True), 0, "structured")
    assert set(fs["forget"]) == set(a.obs_names[:40]) & set(split["train"])
    # a type whose clusters all pass is taken by its label, as before
    assert make_forget_set(a, split, {"kind": "cell_type", "cell_type": "B cell"}, 0)["size"] > 0


def test_a_runner_up_close_behind_flags_the_label_weak(markers, caplog):
    rng = np.random.default_rng(0)
    mk = markers.groupby("cell_type")["gene"].apply(list)
    genes = sorted(set(markers["gene"]))
    col = {g: j for j, g in enumerate(genes)}
    # clusters of 30 cells: B-cell markers high; B-cell and Megakaryocyte markers high (ambiguous);
    # Megakaryocyte markers high; neither (unknown)
    X = rng.normal(1.0, 0.1, size=(120, len(genes)))
    X[:60, [col[g] for g in mk["B cell"]]] += 3
    X[30:90, [col[g] for g in mk["Megakaryocyte"]]] += 3
    a = ad.AnnData(X=X.astype(np.float32))
    a.var_names = genes
    a.obs["leiden"] = pd.Categorical(np.repeat(["0", "1", "2", "3"], 30))
    with caplog.at_level(logging.WARNING):
        table = score_clusters(a, markers)
    assert table["label"].tolist()[::2] == ["B cell", "Megakaryocyte"] and table.loc[3, "label"] == "unknown"
    assert table["weak"].tolist() == [False, True, False, False]
    assert table.loc[1, "label"] in ("B cell", "Megakaryocyte")  # the better of the two, flagged weak
    assert "cluster 1 (30 cells) -> " in caplog.text and "weakly" in caplog.text
    # the report lists it and the unknown cluster, with the forget set on an unsure type
    sets = {"structured": {"kind": "cell_type", "cell_type": table.loc[1, "best_type"]},
            "scattered": {"kind": "random", "n": 5}}
    page = render_cell_type_labels(scores_record(table, MIN_MARKER_SCORE), {"forget_sets": sets})
    assert "2 of 4 clusters are labelled unsurely" in page and "runner-up within 0.15" in page
    assert "below the threshold" in page and "Forget sets on these types: structured" in page
    assert render_cell_type_labels(scores_record(table.iloc[[0]], MIN_MARKER_SCORE), {}) == ""
