"""The SLURM profiles: nothing forced on the user, resources from the workflow, GPUs opt-in.

The real-Slurm run of profiles/slurm is .ci/slurm.sh (it needs root and a Slurm install).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SLURM = ROOT / "profiles/slurm/config.yaml"
GPU = ROOT / "profiles/slurm-gpu/config.yaml"
GPU_RULES = {"baseline", "retrain", "unlearn", "sisa_shards", "audit", "audit_method"}


def _load(path):
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", [SLURM, GPU], ids=["slurm", "slurm-gpu"])
def test_profile_forces_nothing_the_user_or_workflow_decides(path):
    p = _load(path)
    assert p["executor"] == "slurm"
    assert "software-deployment-method" not in p and "use-conda" not in p and "sdm" not in p
    # threads and memory/runtime come from the rules (and config `resources:`), never from here
    assert "set-threads" not in p
    assert "default-resources" not in p  # the user's --default-resources holds the site keys
    for rule, res in p.get("set-resources", {}).items():
        assert set(res) == {"gpu"}, f"{path.name}: set-resources.{rule} overrides {sorted(set(res) - {'gpu'})}"


def test_plain_profile_asks_for_no_gpu():
    assert "set-resources" not in _load(SLURM)
    assert not re.search(r"^[^#]*\b(gpu|gres)\b", SLURM.read_text(), re.M)


def test_gpu_profile_is_the_plain_one_plus_a_gpu_and_cuda():
    plain, gpu = _load(SLURM), _load(GPU)
    assert {k: v for k, v in gpu.items() if k not in ("set-resources", "config")} == plain
    assert gpu["set-resources"] == {r: {"gpu": 1} for r in GPU_RULES}
    assert gpu["config"] == ["device=cuda"]


def _dry_run(tmp_path, profile=None, extra=()):
    cfg = yaml.safe_load((ROOT / "tests/data/tiny.yaml").read_text())
    cfg["resources"] = {"train": {"mem_mb": 1234, "runtime": 7}, "unlearn": {"mem_mb": 2345, "runtime": 9}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    how = ["--profile", str(profile), "--executor", "dryrun"] if profile else []
    r = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(path), *how, "-n", *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    jobs = {}
    for block in re.split(r"\n(?=rule \w+:)", r.stdout):
        m = re.match(r"rule (\w+):", block)
        res = re.search(r"^    resources: (.*)$", block, re.M)
        if m and res:
            jobs.setdefault(m.group(1), dict(kv.split("=", 1) for kv in res.group(1).split(", ")))
    return jobs


@pytest.mark.parametrize("profile", [SLURM.parent, GPU.parent], ids=["slurm", "slurm-gpu"])
def test_jobs_take_memory_and_runtime_from_config_and_gpu_only_from_the_gpu_profile(tmp_path, profile):
    jobs = _dry_run(tmp_path, profile)
    assert {"baseline", "retrain", "unlearn", "preprocess", "audit"} <= set(jobs)
    for rule in ("baseline", "retrain"):
        assert (jobs[rule]["mem_mb"], jobs[rule]["runtime"]) == ("1234", "7")
    assert (jobs["unlearn"]["mem_mb"], jobs["unlearn"]["runtime"]) == ("2345", "9")
    for rule, res in jobs.items():
        if rule == "all":  # a target without an action: never submitted
            continue
        assert "runtime" in res, f"rule {rule} has no runtime: the cluster's default would apply"
        # the plugin asks for no GPU for gpu=0 (the model rules' value when device is not cuda)
        assert (int(res.get("gpu", 0)) > 0) == (profile == GPU.parent and rule in GPU_RULES), (rule, res)


@pytest.mark.parametrize("device, gpus", [("auto", 0), ("cpu", 0), ("cuda", 1), ("cuda:1", 1)])
def test_model_rules_take_the_gpu_resource_only_when_config_asks_for_cuda(tmp_path, device, gpus):
    """`snakemake --resources gpu=N` caps the model jobs on the GPU when device is cuda; with device
    auto (a machine without CUDA included) no job needs a gpu resource. The GPU profile asks for one
    for exactly the rules that take it."""
    jobs = _dry_run(tmp_path, extra=["--cores", "16", "--resources", "gpu=1", "--config", f"device={device}"])
    assert GPU_RULES <= set(jobs)
    taking = {rule for rule, res in jobs.items() if int(res.get("gpu", 0)) > 0}
    assert taking == (GPU_RULES if gpus else set())
    for rule in GPU_RULES:
        assert jobs[rule]["gpu"] == str(gpus)


def test_audit_device_cpu_keeps_the_audits_off_the_gpu(tmp_path):
    """audit.device: cpu with device cuda: the model rules take the GPU, the audits do not (and get the cpu
    device as their param, so changing it reruns them)."""
    jobs = _dry_run(tmp_path, extra=["--cores", "16", "--resources", "gpu=1", "--config", "device=cuda",
                                     "audit={'device': 'cpu'}"])
    assert jobs["audit"]["gpu"] == "0"
    assert {r for r, res in jobs.items() if int(res.get("gpu", 0)) > 0} == GPU_RULES - {"audit", "audit_method"}
