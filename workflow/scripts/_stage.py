"""Make the repository's ``src/`` importable (with or without ``pip install``) for the stage scripts."""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[2] / "src")
# first on the path even when it is already on it: an installed scunlearn (pip install -e of
# another checkout, or an older release) must never answer for this workflow's own code
if _SRC in sys.path:
    sys.path.remove(_SRC)
sys.path.insert(0, _SRC)
for _name in [m for m in sys.modules if m == "scunlearn" or m.startswith("scunlearn.")]:
    del sys.modules[_name]  # imported from elsewhere by Snakemake's preamble: import again from _SRC

from scunlearn.stages import run  # noqa: E402,F401
