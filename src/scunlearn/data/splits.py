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


def own_cell_types(adata: AnnData) -> str | None:
    """``obs['<key>']`` when the data's ``cell_type`` holds its own labels (``preprocess.cell_type_key``), else None
    (marker labels). Read from ``uns['cell_type_source']``, written by scunlearn.data.preprocess; data
    preprocessed before it existed has marker labels."""
    src = adata.uns.get("cell_type_source", "markers")
    return None if str(src) == "markers" else str(src)


#: values of an obs column named in an error, at most
SHOWN_VALUES = 20


def _values_present(labels: pd.Series, column: str) -> str:
    """The values of obs column ``column`` with their cell counts, at most :data:`SHOWN_VALUES` of them."""
    counts = labels.value_counts().sort_index()
    shown = ", ".join(f"{v!r} ({n} cells)" for v, n in counts.iloc[:SHOWN_VALUES].items())
    more = f", ... ({len(counts) - SHOWN_VALUES} more)" if len(counts) > SHOWN_VALUES else ""
    return f"{len(counts)} values in obs['{column}']: {shown}{more}"


def obs_members(adata: AnnData, spec: dict, split: dict) -> tuple[np.ndarray, str]:
    """Cells of a ``kind: obs`` forget set: those whose ``obs[key]`` is one of ``values`` (a donor, sample,
    batch, condition), and its description for messages.

    Refused, listing what the data holds (bounded), when the column is missing or a value labels no cell; and
    when a value has no cell in the audit split: the audit compares the forgotten cells with unseen cells, and
    without unseen cells of the same donor (sample, ...) it could not tell forgetting from that group's own
    difference.
    """
    key, values = str(spec["key"]), [str(v) for v in spec["values"]]
    what = f"obs['{key}'] in {values}"
    if key not in adata.obs.columns:
        cols = [str(c) for c in adata.obs.columns]
        raise ScunlearnError(
            f"forget set: obs column '{key}' is not in the data; its {len(cols)} obs columns: "
            f"{cols[:3 * SHOWN_VALUES]}{' ...' if len(cols) > 3 * SHOWN_VALUES else ''}. Name one of them in "
            "forget_sets.<name>.key (the columns of your h5ad's obs are kept through preprocessing)")
    col = adata.obs[key]
    labels = pd.Series(np.where(col.isna(), "", col.astype(object).astype(str)), index=adata.obs_names)
    present = labels[col.notna().to_numpy()]
    absent = [v for v in values if v not in set(present)]
    if absent:
        raise ScunlearnError(
            f"forget set: {', '.join(map(repr, absent))} not found in obs['{key}']; {_values_present(present, key)}. "
            "Use those values in forget_sets.<name>.values")
    is_member = labels.isin(values).to_numpy() & col.notna().to_numpy()
    audit = np.isin(adata.obs_names, np.asarray(split["audit"]))
    unseen = [v for v in values if not (audit & (labels == v).to_numpy()).any()]
    if unseen:
        raise ScunlearnError(
            f"forget set: {', '.join(map(repr, unseen))} of obs['{key}'] "
            f"{'has' if len(unseen) == 1 else 'have'} no cell in the audit split "
            f"({int(is_member.sum())} cells of {what} in all), so the audit would have no unseen cells of the same "
            "group to compare the forgotten cells with. Enlarge the audit split (lower splits.train_fraction or "
            "splits.validation_fraction) or choose values with more cells")
    return is_member, what


def make_forget_set(adata: AnnData, split: dict, spec: dict, seed: int, name: str = "") -> dict:
    """Choose forget set ``name`` from the train cells by ``spec``.

    ``kind: cell_type`` (``cell_type``: label from the marker annotation, or the data's own with
    ``preprocess.cell_type_key``), ``kind: cluster`` (``cluster``: a Leiden label), ``kind: obs`` (``key``,
    ``values``: cells whose obs column is one of the values, :func:`obs_members`) — each intersected with
    train, optionally ``n`` of them — or ``kind: random`` (``n`` random train cells). Random draws depend on
    the seed and the name (:func:`forget_set_rng`). A marker-labelled cell type is checked against its
    clusters' marker scores (:func:`checked_cell_type`); the data's own labels are the user's ground truth and
    taken as they are.
    """
    train = np.asarray(split["train"])
    rng = forget_set_rng(seed, name)
    kind = spec["kind"]
    if kind in ("cell_type", "cluster", "obs"):
        if kind == "obs":
            is_member, label = obs_members(adata, spec, split)
            what = label
        else:
            key = "cell_type" if kind == "cell_type" else "leiden"
            label = str(spec[kind])
            what = f"{kind} '{label}'"
            labels = adata.obs[key].astype(str)
            is_member = (labels == label).to_numpy()
            own = own_cell_types(adata) if kind == "cell_type" else None
            if kind == "cell_type" and own is None:
                is_member = checked_cell_type(adata, label, is_member, spec, name)
            if not is_member.any():
                origin = ("cluster labels come from Leiden clustering of the data" if kind == "cluster" else
                          "cell types come from annotating the data's clusters with preprocess.markers"
                          if own is None else f"cell types are the data's own labels, {own} (preprocess.cell_type_key)")
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
                    f"forget set: {what} has only {len(pool)} train cells, {n} asked for")
            pool = np.sort(rng.choice(pool, size=n, replace=False))
        min_size = spec.get("min_size", 1)
        if len(pool) < min_size:
            raise ScunlearnError(
                f"forget set: {what} has {len(pool)} train cells, fewer than min_size={min_size}")
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
