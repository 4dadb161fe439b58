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


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_default, allow_nan=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, raising a ScunlearnError that names the file when it is missing or malformed."""
    from . import ScunlearnError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ScunlearnError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise ScunlearnError(f"{path}: not valid JSON ({e})") from e


def read_tsv(path: str | os.PathLike, what: str = "TSV"):
    """Read a TSV into a DataFrame, raising a ScunlearnError that names the file and what it is."""
    import pandas as pd

    from . import ScunlearnError

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


def read_markers(path):
    """The marker table (columns ``cell_type``, ``gene``), with errors naming the file."""
    import pandas as pd

    from . import ScunlearnError

    try:
        m = pd.read_csv(path, sep="\t")
    except FileNotFoundError as e:
        raise ScunlearnError(f"{path}: marker table not found") from e
    if not {"cell_type", "gene"} <= set(m.columns):
        raise ScunlearnError(f"{path}: marker table needs columns 'cell_type' and 'gene'")
    return m


def read_adata(path):
    """An h5ad file, with errors naming the file; logs the stage's start-up mark once it is read."""
    import anndata as ad

    from . import ScunlearnError
    from .costs import log_ready

    try:
        adata = ad.read_h5ad(path)
        log_ready(log, f"read {path}")
        return adata
    except FileNotFoundError as e:
        raise ScunlearnError(f"{path}: file not found") from e
    except Exception as e:  # noqa: BLE001
        raise ScunlearnError(f"{path}: unreadable h5ad ({type(e).__name__}: {e})") from e


def write_h5ad(adata, path) -> None:
    """Uncompressed, atomically: intermediate files are read by many jobs, and gzip made each read ~2x slower."""
    write_with(path, lambda p: adata.write_h5ad(p, compression=None))
