"""How sure each cluster's cell-type label is: the per-cluster record preprocessing writes to
``adata.uns['cell_type_scores']`` and its reader.

numpy and pandas only, so the forget-set and report stages read the record without scanpy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

UNKNOWN = "unknown"
#: default of ``preprocess.min_marker_score``, measured (config/README.md, "preprocess"): every cluster of the
#: demo and the tiny study scores 0.75 or more on its type, while clusters of simulated one-type data sets
#: (where no type's markers stand out) score at most 0.15 on their best type
MIN_MARKER_SCORE = 0.3
#: a label whose score leads the runner-up type's by less than this is flagged weak (logged, recorded, reported):
#: a lead within the largest score noise gave (0.15, above) does not tell the two types apart; clusters of the
#: demo and the tiny study lead by 0.59 or more
WEAK_MARGIN = 0.15
#: ``adata.uns`` key of the record
SCORES_KEY = "cell_type_scores"
#: its per-cluster columns (one list each)
SCORE_COLUMNS = ("cluster", "n_cells", "best_type", "best_score", "runner_up_type", "runner_up_score", "label",
                 "weak")
_DTYPES = {"cluster": str, "n_cells": int, "best_type": str, "best_score": float, "runner_up_type": str,
           "runner_up_score": float, "label": str, "weak": bool}


def scores_record(table: pd.DataFrame, min_score: float) -> dict:
    """A per-cluster table (:data:`SCORE_COLUMNS`) as plain lists that h5ad stores, with the threshold used."""
    rec = {c: [_DTYPES[c](v) for v in table[c]] for c in SCORE_COLUMNS}
    return {**rec, "min_marker_score": float(min_score), "weak_margin": float(WEAK_MARGIN)}


def scores_table(uns: Mapping | None) -> pd.DataFrame | None:
    """The per-cluster table recorded in ``uns`` (lists, or arrays once read from h5ad), else None
    (data preprocessed before the record existed)."""
    rec = uns.get(SCORES_KEY) if uns is not None else None
    if rec is None:
        return None
    return pd.DataFrame({c: np.asarray(rec[c]).tolist() for c in SCORE_COLUMNS}).astype(_DTYPES)


def unsure_clusters(table: pd.DataFrame, min_score: float) -> pd.DataFrame:
    """The clusters whose label is not sure: best score below ``min_score`` (so ``unknown``) or flagged weak."""
    return table[(table["best_score"] < min_score) | table["weak"]]
