"""Where a run's time went: per job and per rule, from Snakemake benchmarks and the stage logs.

Every stage logs ``ready <s>s after process start, <c>s CPU (<what>)`` when its imports
are done and its data are loaded, i.e. when its own work starts (see :func:`log_ready`).
With the ``benchmark:`` file of the same job (wall ``s``, ``cpu_time``, ``max_rss``) this
gives, per rule, the wall time, CPU time, peak memory and the share of wall time (and of
CPU time) spent before the work starts — what a per-job process costs before it does
anything useful. The CPU share is the one to trust on a shared machine, where other
users' work stretches the wall clock.

A job that does several units of work in one process (the audit: every seed of one model)
logs ``units of work: <n> (<what>)`` (see :func:`log_units`), so the table can also show
the cost per unit, comparable with a layout of one job per unit.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

READY = re.compile(r"ready ([0-9.]+)s after process start(?:, ([0-9.]+)s CPU)?")
RULE = re.compile(r"stage \S+: rule (\S+),")
UNITS = re.compile(r"units of work: (\d+)")
DONE = re.compile(r"stage \S+ done, ([0-9.]+)s CPU")


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), so interpreter start-up counts; None elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22: starttime, in clock ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


_T_IMPORT = time.perf_counter()





def log_ready(log: logging.Logger, what: str) -> None:
    """Log the time from process start to now: imports and data loading are done, the work starts.

    Without ``/proc`` the time since this module was imported is logged instead (an underestimate).
    """
    age = process_age()
    if age is None:
        age = time.perf_counter() - _T_IMPORT
    log.info("ready %.2fs after process start, %.2fs CPU (%s)", age, time.process_time(), what)


def log_units(log: logging.Logger, n: int, what: str) -> None:
    """Log how many units of work (e.g. audited models) this job does, for the per-unit costs."""
    log.info("units of work: %d (%s)", n, what)


def format_duration(seconds: float) -> str:
    """A duration as a person reads it in a log: ``12.3 s``, ``4m 10s``, ``2h 05m``."""
    s = max(0.0, float(seconds))
    if s < 59.95:
        return f"{s:.1f} s"
    s = int(round(s))
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def eta(done: int, total: int, elapsed: float, upper_bound: bool = False) -> str:
    """``12.3 s elapsed, ETA 4m 10s``: ``done`` of ``total`` units took ``elapsed`` seconds, the rest at that pace.

    ``upper_bound``: the loop may stop before ``total`` (early stopping), so the ETA is a bound (``ETA ≤ …``).
    """
    if done <= 0:
        return f"{format_duration(elapsed)} elapsed"
    left = max(int(total) - int(done), 0) * float(elapsed) / done
    return f"{format_duration(elapsed)} elapsed, ETA {'≤ ' if upper_bound and left > 0 else ''}{format_duration(left)}"


class Progress:
    """One loop of up to ``total`` units, timed from construction, for its one log line per unit.

    :meth:`count` gives ``epoch   4/100`` (the first time, for a loop that may stop early, followed
    by ``(max; early stopping may end sooner)``, said once); :meth:`timing` the elapsed time and ETA.
    """

    def __init__(self, total: int, unit: str = "epoch", upper_bound: bool = False):
        self.total, self.unit, self.upper_bound = int(total), unit, bool(upper_bound)
        self.start = time.perf_counter()
        self._noted = False

    def count(self, done: int) -> str:
        text = f"{self.unit} {int(done):3d}/{self.total}"  # padded as the logs' epoch numbers always were
        if self.upper_bound and not self._noted:
            self._noted = True
            text += " (max; early stopping may end sooner)"
        return text

    def timing(self, done: int) -> str:
        return eta(done, self.total, time.perf_counter() - self.start, self.upper_bound)


def read_benchmark(path) -> dict:
    """``s``, ``cpu_time`` and ``max_rss`` of a Snakemake ``benchmark:`` file (empty when absent or unreadable)."""
    import pandas as pd

    try:
        b = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return {}
    num = {c: pd.to_numeric(b[c], errors="coerce") for c in ("s", "cpu_time", "max_rss") if c in b}
    # several rows = repeated benchmark runs: use the first, as the workflow runs each job once
    return {k: float(v.iloc[0]) for k, v in num.items() if len(v)}


def _log_facts(path: Path | None) -> tuple[str | None, float, float, int, float]:
    """(rule name, wall and CPU seconds to the last ``ready`` mark, units of work, the job's CPU seconds).

    NaN seconds when there is no log or no mark; 1 unit unless the log says otherwise. The
    job's CPU seconds are the process's own, logged when the stage is done (NaN before that
    line existed): Snakemake's benchmark samples CPU time and can miss the end of a job (it
    gave 15.4 s for a 30 s single-thread job).
    """
    rule, ready, ready_cpu, units, cpu = None, float("nan"), float("nan"), 1, float("nan")
    if path is None:
        return rule, ready, ready_cpu, units, cpu
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return rule, ready, ready_cpu, units, cpu
    for line in text.splitlines():
        if rule is None and (m := RULE.search(line)):
            rule = m.group(1)
        if m := READY.search(line):
            ready = float(m.group(1))
            ready_cpu = float(m.group(2)) if m.group(2) else float("nan")
        if m := UNITS.search(line):
            units = int(m.group(1))
        if m := DONE.search(line):
            cpu = float(m.group(1))
    return rule, ready, ready_cpu, units, cpu


def _match_log(rel: Path, logs: dict[str, Path]) -> Path | None:
    """The log of the job whose benchmark is ``rel``: same relative path, else the unique log ending in it."""
    key = rel.with_suffix("").as_posix()
    if key in logs:
        return logs[key]
    hits = [p for k, p in logs.items() if k.endswith("/" + key)]
    return hits[0] if len(hits) == 1 else None


def job_costs(results_dir: str | os.PathLike):
    """One row per benchmarked job: rule, job, units, wall_s, cpu_s, max_rss_mb, startup_s, startup_cpu_s, log."""
    import pandas as pd

    root = Path(results_dir)
    bench_dir, log_dir = root / "benchmarks", root / "logs"
    logs = {p.relative_to(log_dir).with_suffix("").as_posix(): p for p in log_dir.rglob("*.log")} \
        if log_dir.is_dir() else {}
    rows = []
    for b in sorted(bench_dir.rglob("*.tsv")) if bench_dir.is_dir() else []:
        rel = b.relative_to(bench_dir)
        log = _match_log(rel, logs)
        rule, ready, ready_cpu, units, cpu = _log_facts(log)
        bm = read_benchmark(b)
        rows.append({
            "rule": rule or rel.parts[0].removesuffix(".tsv"), "job": rel.with_suffix("").as_posix(), "units": units,
            "wall_s": bm.get("s", float("nan")),
            "cpu_s": cpu if cpu == cpu else bm.get("cpu_time", float("nan")),  # the log's, else the benchmark's
            "max_rss_mb": bm.get("max_rss", float("nan")), "startup_s": ready, "startup_cpu_s": ready_cpu,
            "log": str(log) if log else "",
        })
    return pd.DataFrame(rows, columns=["rule", "job", "units", "wall_s", "cpu_s", "max_rss_mb", "startup_s",
                                       "startup_cpu_s", "log"])


def _share(jobs, part: str, whole: str) -> float:
    j = jobs.dropna(subset=[part, whole])
    return float(j[part].sum() / j[whole].sum()) if len(j) and j[whole].sum() > 0 else float("nan")


def rule_costs(jobs):
    """Per rule: jobs and their units of work, wall / CPU seconds summed, peak RSS, start-up seconds and
    their share of wall / CPU, per job and per unit (a unit = one audited model for the audit)."""
    import pandas as pd

    cols = ["rule", "jobs", "units", "wall_s", "cpu_s", "max_rss_mb", "startup_s", "startup_share",
            "startup_cpu_s", "startup_cpu_share", "wall_per_job_s", "startup_per_job_s", "wall_per_unit_s",
            "cpu_per_unit_s"]
    if "units" not in jobs:  # a table from before units were logged: one unit per job
        jobs = jobs.assign(units=1)
    if jobs.empty:
        return pd.DataFrame(columns=cols)
    g = jobs.groupby("rule", sort=False)
    out = pd.DataFrame({
        "jobs": g.size(),
        "units": g["units"].sum(),
        "wall_s": g["wall_s"].sum(min_count=1),
        "cpu_s": g["cpu_s"].sum(min_count=1),
        "max_rss_mb": g["max_rss_mb"].max(),
        "startup_s": g["startup_s"].sum(min_count=1),
        "startup_cpu_s": g["startup_cpu_s"].sum(min_count=1),
    })
    # shares over the jobs that logged a ready mark only
    timed = jobs.dropna(subset=["startup_s", "wall_s"]).groupby("rule")
    out["startup_share"] = timed["startup_s"].sum() / timed["wall_s"].sum()
    timed_cpu = jobs.dropna(subset=["startup_cpu_s", "cpu_s"]).groupby("rule")
    out["startup_cpu_share"] = timed_cpu["startup_cpu_s"].sum() / timed_cpu["cpu_s"].sum()
    out["wall_per_job_s"] = out["wall_s"] / out["jobs"]
    out["startup_per_job_s"] = out["startup_s"] / timed.size()
    out["wall_per_unit_s"] = out["wall_s"] / out["units"]
    out["cpu_per_unit_s"] = out["cpu_s"] / out["units"]
    out = out.sort_values("wall_s", ascending=False).reset_index()
    total = {"rule": "TOTAL", "jobs": int(out["jobs"].sum()), "units": int(out["units"].sum()),
             "wall_s": out["wall_s"].sum(),
             "cpu_s": out["cpu_s"].sum(), "max_rss_mb": out["max_rss_mb"].max(),
             "startup_s": out["startup_s"].sum(min_count=1),
             "startup_share": _share(jobs, "startup_s", "wall_s"),
             "startup_cpu_s": out["startup_cpu_s"].sum(min_count=1),
             "startup_cpu_share": _share(jobs, "startup_cpu_s", "cpu_s"),
             "wall_per_job_s": float("nan"), "startup_per_job_s": float("nan"), "wall_per_unit_s": float("nan"),
             "cpu_per_unit_s": float("nan")}
    return pd.concat([out, pd.DataFrame([total])], ignore_index=True)[cols]


def format_table(df) -> str:
    """Fixed-width text of :func:`rule_costs` output."""
    fmt = {"wall_s": "{:.1f}", "cpu_s": "{:.1f}", "max_rss_mb": "{:.0f}", "startup_s": "{:.1f}",
           "startup_share": "{:.0%}", "startup_cpu_s": "{:.1f}", "startup_cpu_share": "{:.0%}",
           "wall_per_job_s": "{:.1f}", "startup_per_job_s": "{:.1f}", "wall_per_unit_s": "{:.1f}",
           "cpu_per_unit_s": "{:.1f}"}
    cells = [[str(c) for c in df.columns]]
    for r in df.itertuples(index=False):
        row = []
        for c, v in zip(df.columns, r):
            if isinstance(v, float) and v != v:
                row.append("-")
            else:
                row.append(fmt.get(c, "{}").format(v))
        cells.append(row)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
                     for row in cells)


# ---------------------------------------------------------------- study cost model

def dag_job_counts(configfile: str | os.PathLike, workdir: str | os.PathLike = ".") -> dict[str, int]:
    """Jobs per rule of the whole DAG for ``configfile`` (``snakemake -n --forceall --quiet rules``)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "snakemake", "-n", "--forceall", "--quiet", "rules", "--configfile", str(configfile)]
    res = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return parse_job_stats(res.stdout + res.stderr)


def parse_job_stats(text: str) -> dict[str, int]:
    """The last ``Job stats`` table of a snakemake dry run as {rule: count} (without 'total')."""
    blocks = text.split("Job stats:")
    if len(blocks) < 2:
        raise ValueError("no 'Job stats' table in the snakemake output")
    counts = {}
    for line in blocks[-1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    counts.pop("total", None)
    return counts


def study_estimate(jobs: list[dict], cores: list[int]) -> dict:
    """Total CPU-hours and wall time on N cores of a list of jobs.

    Each job: ``rule``, ``count``, ``seconds`` (wall of one job), ``threads`` and ``stage``
    (its position on the critical path: jobs of one stage run after the previous stage's),
    and ``gpu`` (optional: the job runs on the GPU). Wall on N cores = max(critical path,
    core-seconds / N): the DAG is wide (many independent models), so beyond a few cores it is
    the critical path that limits. ``gpu_hours``: the GPU jobs' seconds summed (one GPU
    running them one after another).
    """
    core_s = sum(j["count"] * j["seconds"] * j["threads"] for j in jobs)
    stages: dict[int, float] = {}
    for j in jobs:
        stages[j["stage"]] = max(stages.get(j["stage"], 0.0), j["seconds"])
    critical = sum(stages.values())
    return {
        "cpu_hours": core_s / 3600,
        "gpu_hours": sum(j["count"] * j["seconds"] for j in jobs if j.get("gpu")) / 3600,
        "critical_path_h": critical / 3600,
        "wall_h": {n: max(critical, core_s / n) / 3600 for n in cores},
    }


def cpu_model() -> str:
    """CPU model from /proc/cpuinfo, else ``platform`` (quoted by the benchmarks with their numbers)."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------- jobs sharing one device

def shared_gpu_hours(jobs: list[dict], n: int, slowdown: float, lone: tuple[str, ...]) -> float:
    """GPU-hours of ``jobs`` when ``n`` of them share one GPU (``snakemake --resources gpu=n``).

    A job whose rule starts with a name in ``lone`` trains one model alone (unlearning, SISA's shards):
    launch-bound on a GPU, so n of them overlap, each ``slowdown`` times slower than alone (measured
    by :func:`scunlearn.stages.sharing.shared_device_epochs`); they cost ``seconds · slowdown / n`` of the GPU
    each. The other GPU jobs (batched ensembles, audits) are counted whole, as if they ran one at a time:
    an upper bound.
    """
    if n < 1 or slowdown <= 0:
        raise ValueError(f"shared_gpu_hours: n must be >= 1 and slowdown > 0 (got {n}, {slowdown})")
    total = 0.0
    for j in jobs:
        if not j.get("gpu"):
            continue
        share = slowdown / n if j["rule"].startswith(lone) else 1.0
        total += j["count"] * j["seconds"] * share
    return total / 3600
