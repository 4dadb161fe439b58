"""Seeded train / validation / audit splits and the forget sets, saved by barcode.

``train`` (85%) is what the baseline sees; the unseen 15% is split into ``validation``
(early stopping, and the only non-members an unlearning method may use) and ``audit``
(used by nothing but the post-hoc attack). Forget sets are subsets of ``train``;
retain = train − forget. Files store barcodes, sizes and seed; loading checks them.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scunlearn import ScunlearnError
from scunlearn.data.labels import SCORES_KEY, scores_table
from scunlearn.io import read_json, write_json

if TYPE_CHECKING:  # anndata is imported only where a stage reads or writes an AnnData
    from anndata import AnnData

log = logging.getLogger(__name__)

PARTS = ("train", "validation", "audit")


def make_split(barcodes, train_fraction: float, validation_fraction: float, seed: int) -> dict:
    """Split barcodes into train / validation / audit (validation_fraction is of the unseen part)."""
    barcodes = np.asarray(barcodes)
    n = len(barcodes)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_train = int(round(train_fraction * n))
    n_val = int(round(validation_fraction * (n - n_train)))
    parts = {
        "train": perm[:n_train],
        "validation": perm[n_train:n_train + n_val],
        "audit": perm[n_train + n_val:],
    }
    for k, v in parts.items():
        if len(v) == 0:
            raise ScunlearnError(
                f"split '{k}' is empty with {n} cells; adjust splits.train_fraction / validation_fraction")
    return {
        "seed": int(seed),
        "train_fraction": float(train_fraction),
        "validation_fraction": float(validation_fraction),
        "sizes": {k: int(len(v)) for k, v in parts.items()},
        **{k: barcodes[np.sort(v)].tolist() for k, v in parts.items()},
    }


def forget_set_rng(seed: int, name: str) -> np.random.Generator:
    """The random draw of forget set ``name``: seeded by the master seed and a stable hash of the name
    (CRC-32, not Python's salted ``hash``), so two sets of the same spec draw different cells, every run alike."""
    return np.random.default_rng([int(seed), zlib.crc32(str(name).encode())])


def checked_cell_type(adata: AnnData, cell_type: str, is_member: np.ndarray, spec: dict, name: str) -> np.ndarray:
    """The cells of forget set ``name``'s ``cell_type``, refused when the type's labels are no better than noise.

    Refused (:class:`ScunlearnError` naming each cluster whose best type is ``cell_type``, its score and the
    threshold) when no cell carries the label or any such cluster scores below ``preprocess.min_marker_score``
    (so was labelled ``unknown``): its cells need not be of that type. ``accept_weak_labels: true`` in the
    spec takes every such cluster instead, logged. Data without recorded scores is taken by label, logged.
    """
    table = scores_table(adata.uns)
    if table is None:
        log.warning("the data records no per-cluster marker scores (preprocessed by an older scunlearn): cell "
                    "type '%s' is taken by its label, unchecked; rerun the preprocess rule to check it", cell_type)
        return is_member
    threshold = float(adata.uns[SCORES_KEY]["min_marker_score"])
    own = table[table["best_type"] == cell_type]
    low = own[own["best_score"] < threshold]
    for r in own[own["weak"]].itertuples():
        log.warning("cell type '%s': cluster %s (%d cells) is labelled weakly: score %.3f, runner-up %s %.3f",
                    cell_type, r.cluster, r.n_cells, r.best_score, r.runner_up_type, r.runner_up_score)
    if own.empty or (is_member.any() and low.empty):
        return is_member  # a type no cluster scores best on is refused as absent; else every cluster passes
    where = "; ".join(f"cluster {r.cluster} ({r.n_cells} cells, labelled '{r.label}'): score {r.best_score:.3f}"
                      for r in own.itertuples())
    key = f"forget_sets.{name or '<name>'}.accept_weak_labels"
    if not spec.get("accept_weak_labels", False):
        held = "no cell is labelled so" if not is_member.any() else f"{len(low)} of its clusters score below it"
        raise ScunlearnError(
            f"forget set: cell_type '{cell_type}' is too weakly marked to forget by its label ({held}): {where}; "
            f"threshold preprocess.min_marker_score = {threshold:g}. A cluster below it expresses the type's "
            "markers no more than noise does (clusters of a one-type data set score up to 0.15), so its cells "
            "need not be of that type: check that the data holds several cell types, or extend preprocess.markers. "
            f"To forget these clusters anyway, knowing the labels are weak, set {key}: true")
    log.warning("forget set %s: cell type '%s' taken with weak labels (%s: true): %s; threshold "
                "preprocess.min_marker_score = %g", name, cell_type, key, where, threshold)
    clusters = adata.obs["leiden"].astype(str).to_numpy()
    return is_member | np.isin(clusters, own["cluster"].to_numpy())


def make_forget_set(adata: AnnData, split: dict, spec: dict, seed: int, name: str = "") -> dict:
    """Choose forget set ``name`` from the train cells by ``spec``.

    ``kind: cell_type`` (``cell_type``: label from the marker annotation), ``kind: cluster``
    (``cluster``: a Leiden label) — both intersected with train, optionally ``n`` of them —
    or ``kind: random`` (``n`` random train cells). Random draws depend on the seed and the
    name (:func:`forget_set_rng`). A cell type is checked against its clusters' marker scores
    (:func:`checked_cell_type`).
    """
    train = np.asarray(split["train"])
    rng = forget_set_rng(seed, name)
    kind = spec["kind"]
    if kind in ("cell_type", "cluster"):
        key = "cell_type" if kind == "cell_type" else "leiden"
        label = str(spec[kind])
        labels = adata.obs[key].astype(str)
        is_member = (labels == label).to_numpy()
        if kind == "cell_type":
            is_member = checked_cell_type(adata, label, is_member, spec, name)
        if not is_member.any():
            origin = ("cell types come from annotating the data's clusters with preprocess.markers"
                      if kind == "cell_type" else "cluster labels come from Leiden clustering of the data")
            raise ScunlearnError(
                f"forget set: {kind} '{label}' does not exist in the data; available {kind} values: "
                f"{sorted(set(labels))}. These are data-derived ({origin}), so they are known only after "
                f"preprocessing: pick one of them for forget_sets.<name>.{kind} (the preprocess log lists "
                "each cluster's label and score)")
        members = adata.obs_names[is_member]
        pool = np.sort(np.intersect1d(train, members))
        n = spec.get("n")
        if n is not None:
            if len(pool) < n:
                raise ScunlearnError(
                    f"forget set: {kind} '{label}' has only {len(pool)} train cells, {n} asked for")
            pool = np.sort(rng.choice(pool, size=n, replace=False))
        min_size = spec.get("min_size", 1)
        if len(pool) < min_size:
            raise ScunlearnError(
                f"forget set: {kind} '{label}' has {len(pool)} train cells, fewer than min_size={min_size}")
    elif kind == "random":
        n = spec["n"]
        if n > len(train):
            raise ScunlearnError(f"forget set: {n} cells asked for but train has only {len(train)}")
        pool = np.sort(rng.choice(train, size=n, replace=False))
    else:
        raise ScunlearnError(f"forget set: unknown kind '{kind}'")
    if len(pool) >= len(train):
        raise ScunlearnError(f"forget set ({len(pool)} cells) is not smaller than train ({len(train)} cells)")
    return {"seed": int(seed), "name": str(name), "spec": dict(spec), "size": int(len(pool)), "forget": pool.tolist()}


def save_split(obj: dict, path: str | Path) -> None:
    write_json(obj, path)


def check_barcodes(barcodes, obs_names, path, what) -> None:
    """Refuse barcodes that are not in the data, naming the file."""
    barcodes = np.asarray(barcodes)
    missing = barcodes[pd.Index(obs_names).get_indexer(barcodes) < 0]
    if len(missing):
        raise ScunlearnError(
            f"{path}: {len(missing)} {what} barcodes are not in the data (e.g. {missing[0]}); "
            "the split does not belong to this dataset")


@dataclass(frozen=True)
class Partition:
    """Integer row indices into the AnnData for every part of one forget-set experiment."""

    train: np.ndarray
    validation: np.ndarray
    audit: np.ndarray
    forget: np.ndarray
    retain: np.ndarray


def load_partition(adata: AnnData, split_path: str | Path, forget_path: str | Path | None = None) -> Partition:
    """Load a split (and optionally a forget set), check the barcodes, return row indices."""
    split = read_json(split_path)
    for k in PARTS:
        if k not in split:
            raise ScunlearnError(f"{split_path}: missing '{k}'")
        check_barcodes(split[k], adata.obs_names, split_path, k)
    idx = {k: adata.obs_names.get_indexer(split[k]) for k in PARTS}
    if forget_path is not None:
        forget = read_json(forget_path)["forget"]
        check_barcodes(forget, adata.obs_names, forget_path, "forget")
        if not np.isin(forget, split["train"]).all():
            raise ScunlearnError(f"{forget_path}: forget cells must all be train cells")
        f_idx = adata.obs_names.get_indexer(forget)
    else:
        f_idx = np.array([], dtype=int)
    retain = np.setdiff1d(idx["train"], f_idx)
    return Partition(idx["train"], idx["validation"], idx["audit"], np.sort(f_idx), retain)
