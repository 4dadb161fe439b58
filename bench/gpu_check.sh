#!/usr/bin/env bash
# The GPU checks of one short session, in one script with its own time limits: training throughput
# (CUDA-graph and eager steps, one model and an 8-seed ensemble), the CUDA tests, the PBMC study's
# cost on the GPU (bench/study_cost.py --device cuda; unlearning factors from a CPU demo run's
# benchmarks and logs if results/demo is there), the demo on CUDA, and (if time is left) the demo on
# the machine's CPU cores for comparison. Each step's output goes to $OUT (default
# bench/out/gpu_check); the console gets the tails. Run from the repository root:
#
#     bash bench/gpu_check.sh [SECONDS]      # SECONDS: the whole script's budget (default 540; 600+ for
#                                            # the CPU-core demo at the end)
#
# Dependencies not installed on the machine can be carried as wheels in .whl/ (installed with
# --no-deps into /tmp/site, which goes first on PYTHONPATH); see bench/README.md, "GPU".
set -u
BUDGET=${1:-540}
OUT=${OUT:-bench/out/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
step() { echo "== $1 ($(($(date +%s) - T0)) s in, $(left) s left)"; }

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, pandas, anndata, snakemake; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'pandas', pandas.__version__, 'anndata', anndata.__version__, 'snakemake', snakemake.__version__)" | tee -a "$OUT/gpu.txt"

step "training throughput: CUDA-graph step (auto), one model and 8 seeds batched"
timeout 120 python3 bench/train_throughput.py --device cuda --batch-sizes 128,512 --ensemble 1,8 --epochs 1 \
    --out "$OUT/throughput.tsv" > "$OUT/throughput.log" 2>&1
tail -7 "$OUT/throughput.log"
step "training throughput: eager step, for comparison"
timeout 90 python3 bench/train_throughput.py --device cuda --batch-sizes 128 --ensemble 1,8 --step eager --epochs 1 \
    --out "$OUT/throughput_eager.tsv" > "$OUT/throughput_eager.log" 2>&1
tail -4 "$OUT/throughput_eager.log"

step "CUDA tests (graph step vs eager, members vs solo runs, attackers on CUDA, device selection)"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/vae/test_ensemble.py tests/audit/test_audit.py tests/vae/test_gpu_path.py \
    -k "cuda or gpu" > "$OUT/cuda_tests.log" 2>&1
tail -3 "$OUT/cuda_tests.log"

step "the PBMC study's cost on this GPU (study_cost --device cuda; unlearning factors from a CPU demo run if carried)"
# the factors (unlearning over a lone model's training) come from a CPU run: carry results/demo/benchmarks
# and results/demo/logs from one (small text files)
CAL=()
[ -d results/demo/benchmarks ] && CAL=(--calibrate results/demo)
# --share 8: 8 jobs training a lone model each at once on the GPU (--resources gpu=8), measured after the
# main table is printed, within --share-timeout
timeout $(($(left) > 240 ? 240 : $(left) - 5)) python3 bench/study_cost.py --configfile config/config.yaml --device cuda --cores 16 --share 8 --share-timeout 90 "${CAL[@]}" \
    > "$OUT/study_cost_cuda.log" 2>&1
tail -24 "$OUT/study_cost_cuda.log"

step "the demo on CUDA (--cores 16, --resources gpu=8)"
# at most 300 s (it took ~215 s on an H200), leaving 20 s
DEMO_S=$(($(left) - 20)); [ "$DEMO_S" -gt 300 ] && DEMO_S=300
if [ "$DEMO_S" -gt 60 ]; then
    /usr/bin/time -f "demo cuda wall %e s" timeout "$DEMO_S" python3 -m snakemake --cores 16 --resources gpu=8 \
        --configfile config/demo.yaml --config device=cuda run=demo-cuda --quiet rules > "$OUT/demo_cuda.log" 2>&1
    echo $? > "$OUT/demo_cuda.rc"  # time prints its wall line also when the demo fails or times out
    tail -3 "$OUT/demo_cuda.log"
    timeout 30 python3 bench/stage_costs.py results/demo-cuda > "$OUT/stage_costs_cuda.txt" 2>&1
    head -22 "$OUT/stage_costs_cuda.txt"
    grep -h "controls on" results/demo-cuda/logs/controls/*.log 2>/dev/null | cut -c40-260
fi

step "the demo on the CPU cores (--config device=cpu), if time is left"
if [ "$(left)" -gt 120 ]; then
    /usr/bin/time -f "demo cpu wall %e s" timeout $(($(left) - 15)) python3 -m snakemake --cores 16 \
        --configfile config/demo.yaml --config device=cpu run=demo-cpu16 --quiet rules > "$OUT/demo_cpu.log" 2>&1
    echo $? > "$OUT/demo_cpu.rc"
    tail -3 "$OUT/demo_cpu.log"
    timeout 10 python3 bench/stage_costs.py results/demo-cpu16 > "$OUT/stage_costs_cpu.txt" 2>&1
    head -22 "$OUT/stage_costs_cpu.txt"
fi
step "summary: the GPU targets (throughput, PBMC GPU-hours, the demo's wall time)"
python3 - "$OUT" <<'PYEOF' | tee "$OUT/summary.txt"
import csv, re, sys
from pathlib import Path

out = Path(sys.argv[1])
def read(name):
    p = out / name
    return p.read_text() if p.exists() else ""

rows = list(csv.DictReader(read("throughput.tsv").splitlines(), delimiter="\t"))
def cells(models, step=None):
    for r in rows:
        if r["batch_size"] == "128" and r["models"] == str(models) and r["trainer"] == "ensemble" \
                and (step is None or r["step"] == step):
            return float(r["cells_per_s"]), r["step"]
    return None, None
one, st1 = cells(1)
eight, st8 = cells(8)
print(f"one model, batch 128 ({st1} step): {one:,.0f} cells/s (target >= 150,000)" if one else
      "one model, batch 128: not measured (see throughput.log)")
if one and eight:
    print(f"8 members, batch 128 ({st8} step): {eight:,.0f} cells/s summed = {eight / one:.1f}x one model "
          f"(target >= 8x 150,000 = 1,200,000)")
for line in read("study_cost_cuda.log").splitlines():
    if line.startswith("GPU,"):
        print("PBMC estimate:", " ".join(line.split()))
for k in ("cuda", "cpu"):
    m, rc = re.search(rf"demo {k} wall ([0-9.]+) s", read(f"demo_{k}.log")), read(f"demo_{k}.rc").strip()
    state = (f"{float(m.group(1)):.0f} s" if m and rc == "0" else
             "not run" if not rc else f"did not finish (exit {rc}" + (f", after {float(m.group(1)):.0f} s)" if m else ")"))
    print(f"demo on --cores 16, device {k}: {state}")
PYEOF
step "end"
