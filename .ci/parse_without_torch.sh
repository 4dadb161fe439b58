#!/usr/bin/env bash
# The workflow loads with Snakemake alone: a --use-conda user's environment holds Snakemake,
# jsonschema and PyYAML, with PyTorch, numpy and scanpy only inside the rule environments.
# In a fresh venv with just those three, dry-run and lint both configs, and build the rule graph.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$(mktemp -d /tmp/scunlearn-smk-only.XXXXXX)"
trap 'rm -rf "$VENV"' EXIT
python3.11 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "snakemake>=9,<10" jsonschema pyyaml 2> >(grep -v "is ignored: it is neither" >&2)
for pkg in torch numpy scanpy pandas; do
    if "$VENV/bin/python" -c "import $pkg" 2>/dev/null; then
        echo "parse_without_torch.sh: $pkg is importable in the Snakemake-only venv; the check would prove nothing" >&2
        exit 1
    fi
done
cd "$ROOT"
for cfg in config/config.yaml config/demo.yaml; do
    "$VENV/bin/snakemake" -n --quiet rules --configfile "$cfg"
    "$VENV/bin/snakemake" --lint --configfile "$cfg"
    "$VENV/bin/snakemake" --rulegraph --configfile "$cfg" >/dev/null
done
echo "parse_without_torch.sh: dry run, lint and rule graph OK with only snakemake, jsonschema and pyyaml"
