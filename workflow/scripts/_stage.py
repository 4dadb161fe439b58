"""Make the repository's ``src/`` importable (with or without ``pip install``) for the stage scripts."""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[2] / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from scunlearn.pipeline import run  # noqa: E402,F401
