"""The per-stage cost table: benchmarks and logs paired per job, summed per rule."""

import logging

import pytest

from scunlearn.costs import format_table, job_costs, log_ready, process_age, rule_costs

BENCH = ("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
         "{s}\t0:00:{s}\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


def _job(root, bench_rel, log_rel, rule, s, cpu, rss, ready, units=None, done_cpu=None):
    b = root / "benchmarks" / bench_rel
    b.parent.mkdir(parents=True, exist_ok=True)
    b.write_text(BENCH.format(s=s, cpu=cpu, rss=rss))
    if log_rel:
        lg = root / "logs" / log_rel
        lg.parent.mkdir(parents=True, exist_ok=True)
        lg.write_text(f"2026 INFO scunlearn.stages: stage x: rule {rule}, wildcards {{}}, threads 1\n"
                      f"2026 INFO scunlearn.stages: ready 1.00s after process start, 0.50s CPU (stage called)\n"
                      f"2026 INFO scunlearn.stages: ready {ready}s after process start, {ready / 2}s CPU (read)\n"
                      + (f"2026 INFO scunlearn.stages: units of work: {units} (models audited)\n" if units else "")
                      + (f"2026 INFO scunlearn.stages: stage x done, {done_cpu:.2f}s CPU\n" if done_cpu else ""))


def test_rule_table_pairs_logs_and_sums(tmp_path):
    _job(tmp_path, "audit/f/baseline/seed0.tsv", "audit/f/baseline/seed0.log", "audit", 20, 18, 700, 5.0)
    _job(tmp_path, "audit/f/retrain/seed0.tsv", "audit/f/retrain/seed0.log", "audit", 10, 9, 900, 5.0)
    # unlearn logs live under logs/unlearn/, their benchmarks not: paired by the path's end
    _job(tmp_path, "eg/f/seed0.tsv", "unlearn/eg/f/seed0.log", "unlearn", 40, 70, 1200, 8.0)
    _job(tmp_path, "split.tsv", None, "split", 3, 2, 200, 0)  # no log: no start-up figure
    jobs = job_costs(tmp_path)
    assert sorted(jobs["rule"]) == ["audit", "audit", "split", "unlearn"]
    t = rule_costs(jobs).set_index("rule")
    assert t.loc["audit", "jobs"] == 2 and t.loc["audit", "wall_s"] == 30 and t.loc["audit", "cpu_s"] == 27
    assert t.loc["audit", "max_rss_mb"] == 900
    assert t.loc["audit", "startup_s"] == 10  # the last ready mark of each job
    assert t.loc["audit", "startup_share"] == pytest.approx(10 / 30)
    assert t.loc["unlearn", "startup_share"] == pytest.approx(8 / 40)
    assert t.loc["audit", "startup_cpu_s"] == 5 and t.loc["audit", "startup_cpu_share"] == pytest.approx(5 / 27)
    assert t.loc["split", "startup_share"] != t.loc["split", "startup_share"]  # NaN
    assert t.loc["TOTAL", "jobs"] == 4 and t.loc["TOTAL", "startup_share"] == pytest.approx(18 / 70)
    assert "audit" in format_table(t.reset_index())
    assert t.loc["audit", "units"] == 2 and t.loc["audit", "wall_per_unit_s"] == 15  # no units logged: 1 per job


def test_grouped_audit_jobs_count_their_models(tmp_path):
    """One audit job per (forget set, model) auditing 2 seeds: start-up counted once, cost per model halved."""
    from scunlearn.costs import log_units

    _job(tmp_path, "audit/f/baseline.tsv", "audit/f/baseline.log", "audit", 20, 18, 700, 4.0, units=2)
    _job(tmp_path, "audit/f/fisher.tsv", "audit/f/fisher.log", "audit", 16, 14, 700, 4.0, units=2)
    jobs = job_costs(tmp_path)
    assert list(jobs["units"]) == [2, 2] and set(jobs["job"]) == {"audit/f/baseline", "audit/f/fisher"}
    t = rule_costs(jobs).set_index("rule")
    assert t.loc["audit", "jobs"] == 2 and t.loc["audit", "units"] == 4
    assert t.loc["audit", "startup_share"] == pytest.approx(8 / 36)
    assert t.loc["audit", "wall_per_job_s"] == 18 and t.loc["audit", "wall_per_unit_s"] == 9
    assert t.loc["audit", "cpu_per_unit_s"] == pytest.approx(32 / 4)
    assert t.loc["TOTAL", "units"] == 4

    # the stage's own log line is what the table parses
    logger = logging.getLogger("t.units")
    lg = tmp_path / "logs" / "audit" / "f" / "baseline.log"
    handler = logging.FileHandler(lg)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log_units(logger, 3, "models audited")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert job_costs(tmp_path).set_index("job").loc["audit/f/baseline", "units"] == 3  # the last line counts


def test_ready_mark_counts_from_process_start(caplog):
    age = process_age()
    assert age is None or age > 0  # this interpreter has been running for a while
    with caplog.at_level(logging.INFO):
        log_ready(logging.getLogger("t"), "x")
    assert "s after process start, " in caplog.text and "s CPU (x)" in caplog.text


def test_parse_job_stats_and_study_estimate():
    from scunlearn.costs import parse_job_stats, study_estimate

    text = ("Job stats:\njob      count\n-------  -----\nbaseline     4\naudit       56\ntotal       60\n\n"
            "Reasons:\n    forced")
    assert parse_job_stats(text) == {"baseline": 4, "audit": 56}
    jobs = [{"rule": "baseline", "count": 4, "seconds": 100.0, "threads": 2, "stage": 0},
            {"rule": "audit", "count": 56, "seconds": 10.0, "threads": 1, "stage": 1}]
    est = study_estimate(jobs, [1, 4, 1000])
    core_s = 4 * 100 * 2 + 56 * 10
    assert est["cpu_hours"] == pytest.approx(core_s / 3600)
    assert est["wall_h"][1] == pytest.approx(core_s / 3600)
    assert est["wall_h"][4] == pytest.approx(core_s / 4 / 3600)
    assert est["wall_h"][1000] == pytest.approx(110 / 3600)  # the critical path: one baseline, then one audit
    assert est["gpu_hours"] == 0.0  # no job on a GPU
    jobs[0]["gpu"] = jobs[1]["gpu"] = True
    assert study_estimate(jobs, [4])["gpu_hours"] == pytest.approx((4 * 100 + 56 * 10) / 3600)
    jobs[1]["gpu"] = False  # audit.device: cpu
    assert study_estimate(jobs, [4])["gpu_hours"] == pytest.approx(4 * 100 / 3600)


def test_tune_allocator_takes_effect_on_linux_glibc():
    """mallopt accepts every setting on Linux/glibc (it returns 0 for an out-of-range value)."""
    import platform
    import sys

    from scunlearn.runtime import tune_allocator

    ok = tune_allocator()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert ok is True
    else:
        assert ok is False


def test_the_logged_process_cpu_time_overrides_the_sampled_benchmark(tmp_path):
    """Snakemake's benchmark samples CPU time and missed half of a 30 s job; the stage's own figure wins."""
    _job(tmp_path, "eg/f/seed0.tsv", "unlearn/eg/f/seed0.log", "unlearn", 30, 15.4, 500, 2.0, done_cpu=29.5)
    _job(tmp_path, "eg/f/seed1.tsv", "unlearn/eg/f/seed1.log", "unlearn", 30, 15.4, 500, 2.0)  # an older log
    jobs = job_costs(tmp_path).set_index("job")
    assert jobs.loc["eg/f/seed0", "cpu_s"] == pytest.approx(29.5)
    assert jobs.loc["eg/f/seed1", "cpu_s"] == pytest.approx(15.4)


def test_stage_logs_its_process_cpu_time_when_done(tmp_path, monkeypatch):
    import sys
    from types import SimpleNamespace

    from scunlearn.costs import DONE
    from scunlearn.stages import run

    # run() sends stdout, stderr and the root logger to the rule's log: put them back afterwards
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)

    def stage_noop(inp, out, params, threads):
        sum(range(10000))

    log = tmp_path / "x.log"
    smk = SimpleNamespace(log=[str(log)], input={}, output={}, params={}, rule="noop", wildcards={}, threads=1)
    run(stage_noop, smk)
    sys.stdout.flush()
    m = DONE.search(log.read_text())
    assert m and 0 < float(m.group(1)) < 1e4


def _study_cost():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "study_cost.py"
    spec = importlib.util.spec_from_file_location("study_cost", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_study_cost_calibrates_unlearning_per_retrained_model(tmp_path):
    """An ensemble retrain job trains `units` seeds: the unlearn / retrain factor is per retrained model."""
    _job(tmp_path, "retrain/f/ensemble.tsv", "retrain/f/ensemble.log", "retrain", 40, 40, 500, 1.0, units=8)
    _job(tmp_path, "eg/f/seed0.tsv", "unlearn/eg/f/seed0.log", "unlearn", 10, 10, 500, 1.0)
    f = _study_cost().calibration(str(tmp_path), {"eg": {}, "other": {}})
    assert f["eg"] == pytest.approx(10 / (40 / 8)) and f["other"] == 1.0


@pytest.mark.parametrize("ensemble, device", [(True, "cpu"), (False, "auto")])
def test_study_cost_costs_the_batched_ensemble_a_training_job_runs(tmp_path, capsys, ensemble, device):
    """On the tiny study: with train.ensemble one training job per model, costed by a measured epoch of the
    ensemble of all its seeds; without, one job per seed at a lone model's epoch. `--device auto` on a
    machine without a GPU is the CPU (no GPU rows)."""
    from scunlearn.runtime import resolve_device

    if resolve_device(device).type != "cpu":
        pytest.skip("auto is a GPU on this machine")
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    cfg = yaml.safe_load((root / "tests/data/tiny.yaml").read_text())
    cfg["train"]["ensemble"] = ensemble
    cfg["dataset"]["simulate"]["n_cells"] = 800
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert _study_cost().main(["--configfile", str(path), "--jobs-from-config", "--cores", "2,8",
                               "--device", device]) == 0
    out = capsys.readouterr().out
    jobs = next(line for line in out.splitlines() if line.startswith("# jobs"))
    n_models = len(cfg["train"]["seeds"]) + len(cfg["audit"]["reference_seeds"])  # 3
    assert f"baseline {1 if ensemble else n_models}," in jobs
    assert f"retrain {2 if ensemble else 2 * n_models}," in jobs
    assert ("batched ensemble (train.ensemble, 3 seeds" in out) == ensemble
    assert "(attackers on cpu)" in out  # audit.device unset: the study's device, cpu here
    assert not any(line.startswith("GPU,") for line in out.splitlines())  # no GPU rows on the CPU
    assert "not measured (run with --device cuda" in out
    upper = next(line for line in out.splitlines() if line.startswith("CPU, upper"))
    cpu_hours = float(upper.split()[4])
    assert cpu_hours > 0


def test_shared_gpu_hours_divides_only_the_lone_model_jobs():
    """n jobs sharing one GPU: a lone-model job (unlearn, shards) costs seconds · slowdown / n of it; the
    ensembles and audits are counted whole; CPU jobs not at all."""
    from scunlearn.costs import shared_gpu_hours, study_estimate

    jobs = [{"rule": "retrain", "count": 2, "seconds": 300.0, "threads": 2, "stage": 4, "gpu": True},
            {"rule": "unlearn:fisher", "count": 8, "seconds": 100.0, "threads": 2, "stage": 6, "gpu": True},
            {"rule": "sisa_shards", "count": 1, "seconds": 50.0, "threads": 2, "stage": 4, "gpu": True},
            {"rule": "audit", "count": 4, "seconds": 20.0, "threads": 1, "stage": 7, "gpu": True},
            {"rule": "matched_negatives", "count": 2, "seconds": 5.0, "threads": 1, "stage": 5}]
    lone = ("unlearn", "sisa_shards")
    # one job at a time, no slowdown: the plain GPU-hours
    assert shared_gpu_hours(jobs, 1, 1.0, lone) == pytest.approx(study_estimate(jobs, [2])["gpu_hours"])
    got = shared_gpu_hours(jobs, 8, 2.0, lone)
    assert got == pytest.approx((2 * 300 + (8 * 100 + 50) * 2.0 / 8 + 4 * 20) / 3600)
    with pytest.raises(ValueError, match="n must be >= 1"):
        shared_gpu_hours(jobs, 0, 1.0, lone)


def test_shared_device_epochs_runs_n_jobs_at_once(tmp_path, processed):
    """n fresh interpreters each train a lone model on the data; one epoch time per job; a worker's failure
    comes back with its error."""
    from tests.conftest import write_audit_inputs

    write_audit_inputs(tmp_path, processed)
    from scunlearn.stages.sharing import shared_device_epochs

    inp = {"adata": str(tmp_path / "adata.h5ad"), "split": str(tmp_path / "split.json")}
    model = {"hidden": [32], "latent": 4, "dropout": 0.1}
    train = {"lr": 1e-3, "batch_size": 128, "kl_warmup_epochs": 1}
    secs = shared_device_epochs(2, inp, model, train, "cpu", tmp_path / "w", epochs=2, timeout=240)
    assert len(secs) == 2 and all(0 < s < 60 for s in secs)
    with pytest.raises(RuntimeError, match="nope.h5ad"):
        shared_device_epochs(1, {**inp, "adata": str(tmp_path / "nope.h5ad")}, model, train, "cpu",
                             tmp_path / "w", epochs=1, timeout=120)


def test_study_cost_prints_the_gpu_hours_of_n_jobs_sharing_it():
    """The rows study_cost prints on a GPU for n jobs sharing it: the measured slowdown, the GPU-hours."""
    from scunlearn.costs import shared_gpu_hours

    sc = _study_cost()
    hi = [{"rule": "unlearn:eg", "count": 16, "seconds": 90.0, "threads": 2, "stage": 6, "gpu": True},
          {"rule": "retrain", "count": 2, "seconds": 500.0, "threads": 2, "stage": 4, "gpu": True}]
    lo = [{**j, "seconds": j["seconds"] / 3} for j in hi]
    assert sc.shared_rows({1: 2.0}, hi, lo) == []  # nothing shared was measured
    rows = sc.shared_rows({1: 2.0, 8: 3.0}, hi, lo)
    upper = next(r for r in rows if r.startswith("GPU, upper, 8 sharing"))
    assert f"{shared_gpu_hours(hi, 8, 1.5, ('unlearn',)):.2f}h GPU" in upper and "1.50x alone" in upper
    assert float(upper.split()[4].rstrip("h")) == pytest.approx((16 * 90 * 1.5 / 8 + 2 * 500) / 3600, abs=0.01)
    assert any(r.startswith("GPU, lower, 8 sharing") for r in rows)


def test_study_cost_measures_a_lone_epoch_with_n_jobs_at_once(tmp_path):
    """measure_sharing (what --share asks on a GPU), on the data measure wrote: a lone model's epoch with 1
    and with 2 jobs at once; out of time, a TimeoutError that study_cost reports instead of the rows."""
    from pathlib import Path

    sc = _study_cost()
    cfg = sc.load_config(Path(__file__).resolve().parents[2] / "tests/data/tiny.yaml")
    sc.measure(cfg, 600, int(cfg["preprocess"]["n_hvg"]), 1, "cpu", tmp_path)
    shared = sc.measure_sharing(cfg, "cpu", tmp_path, [2], timeout=240)
    assert set(shared) == {1, 2} and all(0 < s < 60 for s in shared.values())
    with pytest.raises(TimeoutError, match="--share"):
        sc.measure_sharing(cfg, "cpu", tmp_path, [2], timeout=0.5)
