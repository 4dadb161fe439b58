#!/usr/bin/env bash
# Today's releases: a second venv from scratch (.venv-newest, git-ignored) with the newest release of
# every dependency that resolves together with pandas 3, then the whole test suite in it (the tiny
# end-to-end study included: acquire's nullable strings, the report's figures, Opacus, scanpy). `-e .` alone resolves pandas 2: anndata's newest releases (0.12.7 on) cap
# pandas below 3, so it is asked for, and pip takes the newest anndata that accepts it (0.12.6 when
# written). The main venv (.ci/run) is the other tested set: the newest releases without that request.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
rm -rf .venv-newest
python3.11 -m venv .venv-newest
PY=.venv-newest/bin/python
quiet() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
quiet "$PY" -m pip install --quiet --upgrade pip
# CPU build of torch first (a bare `torch` would pull a multi-GB CUDA build), then the rest at their newest
quiet "$PY" -m pip install --quiet torch==2.13.0
quiet "$PY" -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[test]" "pandas>=3"
"$PY" - <<'PYEOF'
from importlib.metadata import version

pkgs = ("pandas", "anndata", "scanpy", "numpy", "scipy", "h5py", "snakemake", "torch", "opacus")
print("newest.sh tests:", ", ".join(f"{p} {version(p)}" for p in pkgs))
assert int(version("pandas").split(".")[0]) >= 3, "pandas 3 did not resolve"
PYEOF
# the workflow's subprocesses (snakemake, the stage scripts) run this venv's Python
PATH="$PWD/.venv-newest/bin:$PATH" "$PY" -m pytest -q -p no:cacheprovider
echo "newest.sh: OK in $((SECONDS - start)) s"
