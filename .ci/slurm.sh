#!/usr/bin/env bash
# Real-Slurm test of profiles/slurm, bounded to 15 minutes (run as root, from .ci/run or alone).
#
# Installs Debian's Slurm and MUNGE, starts munged and a one-node cluster on localhost (no
# accounting daemon, like many small clusters), installs the executor plugin into the active
# venv, runs tests/data/tiny.yaml through `--profile profiles/slurm` with the site keys a user
# sets (README, "On a SLURM cluster") and checks that
#   - every job of the DAG went through sbatch (squeue keeps finished jobs for MinJobAge;
#     each one carries the run's name and its rule in the comment), and none failed;
#   - the outputs are complete (summary table with every audited model, the report, and a
#     dry run afterwards has nothing left to do).
# Every daemon it starts is stopped by PID on exit, failure included.
#
# Usage: .ci/slurm.sh            (needs the project venv active or at .venv)
# Env:   SCUNLEARN_SLURM_TIMEOUT  seconds for the workflow run (default 780)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)
if [ "$(id -u)" != 0 ]; then
    echo "slurm.sh: needs root (apt-get, munged, slurmd)" >&2
    exit 2
fi
if [ -z "${VIRTUAL_ENV:-}" ]; then
    . .venv/bin/activate
fi
for d in munged slurmctld slurmd; do
    if pgrep -x "$d" >/dev/null; then
        echo "slurm.sh: a $d is already running on this machine; not starting a second cluster" >&2
        exit 2
    fi
done

WORK="$(mktemp -d /tmp/scunlearn-slurm.XXXXXX)"
chmod 755 "$WORK"
PIDS=()        # every daemon this script started, stopped in reverse order on exit
MUNGE_PIDFILE="$WORK/munge/munged.pid"

stop_daemons() {
    local rc=$?
    set +e
    # jobs still queued or running on this private cluster (after a failure or a timeout)
    if [ -n "${CTLD_PID:-}" ] && kill -0 "$CTLD_PID" 2>/dev/null; then
        timeout 10 scancel --partition ci 2>/dev/null
        for _ in $(seq 30); do
            [ -z "$(timeout 10 squeue -h -t pending,running,completing 2>/dev/null)" ] && break
            sleep 1
        done
    fi
    if [ -f "$MUNGE_PIDFILE" ]; then
        PIDS=("$(cat "$MUNGE_PIDFILE")" "${PIDS[@]}")
    fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        local pid="${PIDS[$i]}"
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm.sh: daemon $pid still running" >&2
            rc=1
        fi
    done
    [ -n "${CONF_LINK:-}" ] && rm -f "$CONF_LINK"
    if pgrep -x slurmstepd >/dev/null; then
        echo "slurm.sh: a slurmstepd is still running: $(pgrep -x slurmstepd | tr '\n' ' ')" >&2
        rc=1
    fi
    if [ "$rc" != 0 ]; then
        echo "slurm.sh: FAILED (rc $rc); logs in $WORK" >&2
        tail -n 30 "$WORK"/slurmctld.log "$WORK"/slurmd.log 2>/dev/null >&2
    else
        rm -rf "$WORK"
    fi
    echo "slurm.sh: $(($(date +%s) - START)) s in total"
    exit "$rc"
}
trap stop_daemons EXIT
trap 'exit 130' INT TERM

# ---- install
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
python -m pip install --quiet "snakemake-executor-plugin-slurm==2.8.0" 2> >(grep -v "is ignored: it is neither" >&2)

# ---- munged
install -d -o munge -g munge -m 0755 /run/munge
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
install -d -o munge -g munge -m 0755 "$WORK/munge"
runuser -u munge -- munged --pid-file="$MUNGE_PIDFILE"
for _ in $(seq 50); do [ -s "$MUNGE_PIDFILE" ] && break; sleep 0.1; done
munge -n | unmunge >/dev/null

# ---- a one-node cluster on localhost
HOST="$(hostname -s)"
MEM="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"   # as slurmd sees it
# twice the cores as Slurm CPUs (config_overrides): jobs overlap their start-up and status-poll
# latency instead of queueing behind each other; what each job asks for is unchanged
CPUS=$((2 * $(nproc)))
mkdir -p "$WORK/state" "$WORK/spool"
# srun inside a job looks for the default path, whatever SLURM_CONF says: link it there
[ -e /etc/slurm/slurm.conf ] && { echo "slurm.sh: /etc/slurm/slurm.conf exists; not overwriting it" >&2; exit 2; }
export SLURM_CONF="$WORK/slurm.conf"
ln -s "$SLURM_CONF" /etc/slurm/slurm.conf
CONF_LINK=/etc/slurm/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=scunlearn-ci
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
# finished jobs stay visible to squeue (no accounting here; and this machine's clock can jump)
MinJobAge=86400
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=ci Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -f "$SLURM_CONF" >"$WORK/slurmctld.out" 2>&1 &
CTLD_PID=$!
PIDS+=("$CTLD_PID")
slurmd -D -f "$SLURM_CONF" >"$WORK/slurmd.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "slurm.sh: a Slurm daemon died:" >&2; cat "$WORK"/*.out >&2; exit 1; }
    done
    state="$(timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null || true)"
    [ "$state" = idle ] && break
    sleep 1
done
echo "slurm.sh: $(sinfo -V), executor plugin $(pip show snakemake-executor-plugin-slurm | sed -n 's/^Version: //p')"
sinfo
[ "$state" = idle ] || { echo "slurm.sh: node never became idle (state '$state')" >&2; exit 1; }

# ---- the site keys a user sets (README, "On a SLURM cluster"): the partition (no account on
# this cluster), and squeue for job status since there is no accounting daemon
SITE=(--profile profiles/slurm --default-resources slurm_partition=ci --slurm-status-command squeue)
# CI only: poll sooner than the plugin's 40 s, keep every job's Slurm log for the checks
CI_ONLY=(--slurm-init-seconds-before-status-checks 5 --slurm-keep-successful-logs)

# ---- the run
RUNDIR="$WORK/run"
mkdir -p "$RUNDIR"
SMK=(snakemake --snakefile "$ROOT/Snakefile" --directory "$RUNDIR" --configfile "$ROOT/tests/data/tiny.yaml")
JOBS_PLANNED="$("${SMK[@]}" -n --quiet rules | awk '$1 == "total" {print $2; exit}')"
N_ALL="$("${SMK[@]}" -n --quiet rules | awk '$1 == "all" {print $2; exit}')"
EXPECTED=$((JOBS_PLANNED - N_ALL))          # `all` has no action: never submitted
echo "slurm.sh: $EXPECTED jobs to submit"
T0=$(date +%s)
set +e
timeout -k 10 "${SCUNLEARN_SLURM_TIMEOUT:-780}" "${SMK[@]}" "${SITE[@]}" "${CI_ONLY[@]}" >"$WORK/snakemake.log" 2>&1
rc=$?
set -e
RUN_ID="$(sed -n 's/.*SLURM run ID: \([^ ]*\).*/\1/p' "$WORK/snakemake.log" | head -n 1)"
echo "slurm.sh: workflow run: rc $rc, $(($(date +%s) - T0)) s, SLURM run ID '$RUN_ID'"
if [ "$rc" != 0 ]; then
    tail -n 60 "$WORK/snakemake.log" >&2
    exit 1
fi

# ---- checks
squeue -h -t all -n "$RUN_ID" -o "%i|%T|%k|%C|%m" >"$WORK/jobs.txt"
python - "$WORK/jobs.txt" "$EXPECTED" "$WORK/snakemake.log" "$RUNDIR/results/tiny" <<'EOF'
import re, sys
from pathlib import Path
import pandas as pd

jobs_file, expected, log, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]).read_text(), Path(sys.argv[4])
rows = [line.split("|") for line in Path(jobs_file).read_text().splitlines() if line.strip()]
states = {r[1] for r in rows}
rule_of = lambda comment: re.sub(r"_wildcards_.*", "", comment).removeprefix("rule_")  # noqa: E731
rules = sorted({rule_of(r[2]) for r in rows})
# CPUs = the rule's threads, memory = the rule's resources (config `resources:` for training)
asked = {rule_of(r[2]): (r[3], r[4]) for r in rows}
expected_ask = {"preprocess": ("2", "16000M"), "baseline": ("2", "16000M"), "unlearn": ("2", "16000M"),
                "audit": ("1", "8000M"), "split": ("1", None)}
for rule, (cpus, mem) in expected_ask.items():
    assert asked[rule][0] == cpus and (mem is None or asked[rule][1] == mem), (rule, asked[rule])
print("CPUs and memory per rule as submitted:", dict(sorted(asked.items())))
submitted = len(re.findall(r"has been submitted with SLURM jobid", log))
print(f"slurm jobs of this run: {len(rows)} (expected {expected}), states {sorted(states)}; "
      f"submissions logged by snakemake: {submitted}; rules {rules}")
assert len(rows) == expected, "not every job went through sbatch"
assert submitted == expected, "snakemake logged a different number of submissions"
assert states == {"COMPLETED"}, f"job states {states}"
summary = pd.read_csv(out / "report/summary.tsv", sep="\t")
# one record per audited model; audit/<forget>/controls.json is the judge's control tally, not a model
n_audits = len([p for p in (out / "audit").rglob("*.json") if p.name != "controls.json"])
assert len(summary) == n_audits > 0, (len(summary), n_audits)
n_controls = len(list((out / "audit").rglob("controls.json")))
assert n_controls == summary["forget_set"].nunique(), (n_controls, summary["forget_set"].nunique())
assert summary["auc"].between(0, 1).all()
assert set(summary["method"]) >= {"baseline", "retrain"}
assert (out / "report/index.html").stat().st_size > 0
print(f"outputs complete: summary.tsv with {len(summary)} audited models, report/index.html")
EOF
"${SMK[@]}" -n >"$WORK/after.txt" 2>&1
grep -q "Nothing to be done" "$WORK/after.txt" || { cat "$WORK/after.txt" >&2; exit 1; }
echo "slurm.sh: OK, a dry run afterwards has nothing to do"
