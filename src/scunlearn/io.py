"""Atomic file writing, JSON helpers and logging setup shared by every stage.

Every output is written to a temporary file beside its target and renamed into place,
so a failed or interrupted job never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger("scunlearn")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs must be readable like any other file
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(obj: Any, path: str | os.PathLike, digest: bool = True) -> None:
    """Write ``obj`` as indented JSON, atomically, its digest recorded beside it (:func:`write_with_digest`):
    the split, forget-set, matched-negative and audit records are what later stages compute verdicts from."""
    text = json.dumps(obj, indent=2, default=_default, allow_nan=True) + "\n"
    if digest:
        write_with_digest(path, lambda tmp: tmp.write_text(text))
    else:
        with atomic_path(path) as tmp:
            tmp.write_text(text)


def read_json(path: str | os.PathLike, verify: bool = True) -> Any:
    """Read JSON a stage wrote, its digest verified first (:func:`verify_digest`), raising a ScunlearnError
    that names the file when it is missing, changed or malformed."""
    from scunlearn import ScunlearnError

    try:
        if verify:
            verify_digest(path)
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ScunlearnError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise ScunlearnError(f"{path}: not valid JSON ({e})") from e


def read_tsv(path: str | os.PathLike, what: str = "TSV"):
    """Read a TSV into a DataFrame, raising a ScunlearnError that names the file and what it is."""
    import pandas as pd

    from scunlearn import ScunlearnError

    try:
        return pd.read_csv(path, sep="\t")
    except FileNotFoundError as e:
        raise ScunlearnError(f"{path}: {what} not found") from e
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ScunlearnError(f"{path}: not a readable {what} ({e})") from e


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and atomically move the result onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_tsv(df, path: str | os.PathLike) -> None:
    """Write a DataFrame as TSV (no index), atomically."""
    write_with(path, lambda p: df.to_csv(p, sep="\t", index=False))


def setup_logging(logfile: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Send the library's log (and warnings, stdout, stderr) to ``logfile`` — the rule's log."""
    handlers: list[logging.Handler] = []
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        stream = open(logfile, "a", buffering=1)
        sys.stdout = stream
        sys.stderr = stream
        handlers.append(logging.StreamHandler(stream))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


#: the SHA-256 of a file a stage wrote, recorded beside it (``<file>.sha256``, ``sha256sum -c`` format)
DIGEST_SUFFIX = ".sha256"


def digest_path(path: str | os.PathLike) -> Path:
    """Where the digest of ``path`` is recorded: ``<path>.sha256`` beside it."""
    return Path(str(path) + DIGEST_SUFFIX)


def write_with_digest(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """:func:`write_with`, recording the file's SHA-256 beside it first, so a later change is noticed on reading
    (:func:`verify_digest`): Snakemake judges files by their time, which a copy or restore can keep."""
    path = Path(path)
    with atomic_path(path) as tmp:
        writer(tmp)
        digest = sha256sum(tmp)
        with atomic_path(digest_path(path)) as rec:
            rec.write_text(f"{digest}  {path.name}\n")


def rebuild_hint(path: str | os.PathLike) -> str:
    """How a user rebuilds one file of the workflow (and everything computed from it)."""
    return f"rebuild it: add `--forcerun {path}` to your snakemake command (or delete it and rerun snakemake)"


def verify_digest(path: str | os.PathLike) -> None:
    """Refuse a file whose SHA-256 differs from the one recorded when it was written, or that has no record:
    a verdict must never be computed from a file that cannot be shown to be the one its stage wrote
    (Snakemake judges files by their time, which an edit, copy or restore can keep)."""
    from scunlearn import ScunlearnError

    path = Path(path)
    rec = digest_path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    try:
        expected = rec.read_text().split()[0]
    except (FileNotFoundError, IndexError):
        raise ScunlearnError(
            f"{path}: no digest record ({rec} is missing or empty), so the file cannot be shown to be the one "
            f"the workflow wrote; {rebuild_hint(path)}") from None
    actual = sha256sum(path)
    if actual != expected:
        raise ScunlearnError(
            f"{path}: the file changed since it was written (sha256 {actual[:16]}…, but {rec} records "
            f"{expected[:16]}…): it may be edited, truncated, corrupt or copied from elsewhere; {rebuild_hint(path)}")


def read_markers(path):
    """The marker table (columns ``cell_type``, ``gene``), with errors naming the file."""
    import pandas as pd

    from scunlearn import ScunlearnError

    try:
        m = pd.read_csv(path, sep="\t")
    except FileNotFoundError as e:
        raise ScunlearnError(f"{path}: marker table not found") from e
    if not {"cell_type", "gene"} <= set(m.columns):
        raise ScunlearnError(f"{path}: marker table needs columns 'cell_type' and 'gene'")
    return m


UNREADABLE_H5AD = "it may be truncated or corrupt: delete it and rerun snakemake, which rebuilds it"


def read_adata(path, verify: bool = True):
    """An h5ad file a stage wrote, its digest verified (:func:`verify_digest`), with errors naming the file;
    logs the stage's start-up mark once it is read."""
    import anndata as ad

    from scunlearn import ScunlearnError
    from scunlearn.costs import log_ready

    try:
        if verify:
            verify_digest(path)
        adata = ad.read_h5ad(path)
        log_ready(log, f"read {path}")
        return adata
    except ScunlearnError:
        raise
    except FileNotFoundError as e:
        raise ScunlearnError(f"{path}: file not found") from e
    except Exception as e:  # noqa: BLE001
        raise ScunlearnError(f"{path}: unreadable h5ad ({type(e).__name__}: {e}); {UNREADABLE_H5AD}") from e


class CellData:
    """What the model stages read of an h5ad file (counts, cell and gene names, ``obs``, ``obsm``, ``uns``
    scalars), with AnnData's attribute names: they accept it where they accept an AnnData."""

    def __init__(self, X, layers: dict, obs, var_names, obsm: dict, uns: dict):
        self.X, self.layers, self.obs, self.obsm, self.uns = X, layers, obs, obsm, uns
        self.obs_names, self.var_names = obs.index, var_names

    @property
    def n_obs(self) -> int:
        return len(self.obs_names)

    @property
    def n_vars(self) -> int:
        return len(self.var_names)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_obs, self.n_vars


class _UnknownEncoding(Exception):
    pass


def _h5_strings(ds) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]


def _h5_element(node):
    """One element of an h5ad file in AnnData's on-disk encoding (arrays, strings, categoricals, CSR)."""
    import h5py

    enc = node.attrs.get("encoding-type", "array" if isinstance(node, h5py.Dataset) else "dict")
    if enc == "array":
        return node[()]
    if enc == "string-array":
        return np.asarray(_h5_strings(node), dtype=object)
    if enc == "categorical":
        import pandas as pd

        cats = _h5_element(node["categories"])
        return pd.Categorical.from_codes(node["codes"][()], cats, ordered=bool(node.attrs.get("ordered", False)))
    if enc in ("csr_matrix", "csc_matrix"):
        import scipy.sparse as sp

        make = sp.csr_matrix if enc == "csr_matrix" else sp.csc_matrix
        return make((node["data"][()], node["indices"][()], node["indptr"][()]), shape=tuple(node.attrs["shape"]))
    if enc in ("string", "numeric-scalar"):
        v = node[()]
        return v.decode() if isinstance(v, bytes) else v
    if enc == "dict":
        return {k: _h5_element(node[k]) for k in node.keys()}
    raise _UnknownEncoding(enc)


def _h5_frame(node):
    import pandas as pd

    key = node.attrs["_index"]
    index = pd.Index(_h5_element(node[key]), dtype=object, name=None if key == "_index" else key)
    cols = {c: _h5_element(node[c]) for c in node.attrs.get("column-order", [])}
    return pd.DataFrame(cols, index=index)


def read_cells(path) -> CellData:
    """The parts of an h5ad file the model stages use, read with h5py alone: importing AnnData
    (and zarr, which it pulls in) cost each of the workflow's many training, unlearning and audit
    jobs ~0.5 s of its start-up. Files in an encoding this reader does not know go through
    :func:`read_adata`. The digest is verified first (:func:`verify_digest`). Errors name the file;
    logs the stage's start-up mark once it is read."""
    import h5py

    from scunlearn import ScunlearnError
    from scunlearn.costs import log_ready

    try:
        verify_digest(path)
        with h5py.File(path, "r") as f:
            if f.attrs.get("encoding-type") != "anndata":
                raise _UnknownEncoding(f.attrs.get("encoding-type"))
            obs = _h5_frame(f["obs"])
            var = _h5_frame(f["var"])
            layers = {k: _h5_element(f["layers"][k]) for k in f["layers"]} if "layers" in f else {}
            obsm = {k: _h5_element(f["obsm"][k]) for k in f["obsm"]} if "obsm" in f else {}
            uns = {k: _h5_element(f["uns"][k]) for k in f["uns"]
                   if f["uns"][k].attrs.get("encoding-type") in ("string", "numeric-scalar")} if "uns" in f else {}
            X = _h5_element(f["X"]) if "X" in f else None
    except FileNotFoundError as e:
        raise ScunlearnError(f"{path}: file not found") from e
    except (_UnknownEncoding, KeyError):
        return read_adata(path, verify=False)  # verified above
    except OSError as e:
        raise ScunlearnError(f"{path}: unreadable h5ad ({type(e).__name__}: {e}); {UNREADABLE_H5AD}") from e
    log_ready(log, f"read {path}")
    return CellData(X, layers, obs, var.index, obsm, uns)


def _plain_strings(values):
    """Strings as a plain object array (AnnData's long-standing ``string-array`` encoding) when they are
    pandas string dtype (``pd.array(..., dtype="string")``, or pandas 3's default ``str``); a column with
    missing strings becomes a categorical (its missing values are code -1). Anything else: unchanged."""
    import pandas as pd

    dtype = values.dtype
    if isinstance(values, pd.Index):
        return values.astype(object) if isinstance(dtype, pd.StringDtype) else values
    if isinstance(dtype, pd.CategoricalDtype):
        cats = values.cat.categories
        return values.cat.set_categories(cats.astype(object)) if isinstance(cats.dtype, pd.StringDtype) else values
    if not isinstance(dtype, pd.StringDtype):
        return values
    if values.isna().any():
        cats = pd.Index(values.dropna().unique().astype(object), dtype=object)
        return pd.Series(pd.Categorical(values.astype(object), categories=cats), index=values.index, name=values.name)
    return values.astype(object)


def _plain_string_frame(df):
    """``df`` with its string columns, string categories and string index as object dtype (see _plain_strings);
    ``df`` itself when nothing needs it."""
    changed = {}
    for c in df.columns:
        col = df[c]
        plain = _plain_strings(col)
        if plain is not col:
            changed[c] = plain
    index = _plain_strings(df.index)
    if not changed and index is df.index:
        return df
    out = df.copy()
    for c, v in changed.items():
        out[c] = v
    out.index = index
    return out


def write_h5ad(adata, path) -> None:
    """Uncompressed, atomically, digest recorded: intermediate files are read by many jobs, and gzip made each
    read ~2x slower; the digest is verified on reading.

    Strings in ``obs`` and ``var`` (columns, categories, names) are written as plain object arrays: pandas 3
    makes every string column and index its ``str`` dtype (and pandas 2 users may have ``string`` columns),
    which AnnData refuses to write unless ``anndata.settings.allow_write_nullable_strings`` is set, and
    which then needs anndata >= 0.11 to read back. ``adata`` itself is left as it was.
    """
    if adata.is_view:
        adata = adata.copy()
    obs, var = adata.obs, adata.var
    plain_obs, plain_var = _plain_string_frame(obs), _plain_string_frame(var)
    try:
        if plain_obs is not obs:
            adata.obs = plain_obs
        if plain_var is not var:
            adata.var = plain_var
        write_with_digest(path, lambda p: adata.write_h5ad(p, compression=None))
    finally:
        if plain_obs is not obs:
            adata.obs = obs
        if plain_var is not var:
            adata.var = var
