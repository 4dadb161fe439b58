"""Reruns follow the code: a rule's code inputs are the library files its stage imports (scunlearn.codedeps).

Editing one method's module reruns that method's unlearning jobs, their audits, aggregate and
report, and nothing else; editing the optimiser reruns every training job and what follows.
Checked on a copy of the repository with the tiny study's outputs made up to date by
``snakemake --touch`` (no training: the plan, not the results, is under test).
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scunlearn import codedeps

from ..conftest import ROOT


def _snakemake(args, cwd, timeout=300):
    exe = Path(sys.executable).with_name("snakemake")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _jobs(text: str) -> dict[str, int]:
    """The dry run's 'Job stats' table: rule -> job count."""
    block = text.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block, re.M)}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A repository copy and a tiny study (with a scrub variant on one forget set) whose outputs are all up to date."""
    repo = tmp_path_factory.mktemp("repo")
    for name in ("Snakefile", "src", "workflow", "config", "resources", "envs"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.tar.gz",
                                                                           "filtered_gene_bc_matrices"))
        else:
            shutil.copy2(src, repo / name)
    cfg = yaml.safe_load((ROOT / "tests/data/tiny.yaml").read_text())
    cfg["methods"]["scrub"] = {"method": "scrub", "params": {"epochs": 1}, "forget_sets": ["scattered"]}
    path = repo / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    work = tmp_path_factory.mktemp("work")
    args = ["-s", str(repo / "Snakefile"), "--configfile", str(path), "--directory", str(work), "--cores", "1"]
    # every output as an empty file (the summary lists them), then --touch dates them in the DAG's order
    r = _snakemake([*args, "--summary"], work)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    outputs = [line.split("\t")[0] for line in r.stdout.splitlines()[1:] if line.strip()]
    assert len(outputs) > 50
    # and the benchmarks (the audit reads the training jobs'), which the summary does not list
    r = _snakemake([*args, "-n", "--forceall"], work)
    outputs += [line.split(":", 1)[1].strip() for line in r.stdout.splitlines() if line.startswith("    benchmark:")]
    for f in outputs:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).touch()
    r = _snakemake([*args, "--touch"], work)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    r = _snakemake([*args, "-n"], work)
    assert "Nothing to be done" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    return repo, work, args


def _after_editing(study, relpath: str) -> dict[str, int]:
    repo, work, args = study
    f = repo / "src/scunlearn" / relpath
    original = f.read_text()
    try:
        f.write_text(original + "\n# an edit\n")
        r = _snakemake([*args, "-n"], work)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        return _jobs(r.stdout + r.stderr)
    finally:
        f.write_text(original)
        _snakemake([*args, "--touch"], work)  # mtimes: the next edit starts from an up-to-date study


def test_editing_one_method_reruns_only_that_method(study):
    jobs = _after_editing(study, "methods/scrub.py")
    # scrub runs on the scattered set only, at train seed 0: one unlearn job, its audit, then the summary
    assert jobs == {"unlearn": 1, "audit_method": 1, "aggregate": 1, "report": 1, "all": 1}


def test_editing_the_optimiser_reruns_all_training_and_below(study):
    jobs = _after_editing(study, "vae/optim.py")
    for rule in ("baseline", "retrain", "sisa_shards", "unlearn", "audit", "audit_method", "controls", "aggregate",
                 "report"):
        assert jobs.get(rule, 0) > 0, (rule, jobs)
    # both forget sets; every variant (scrub, the ladder's rungs and the newer methods included)
    assert jobs["retrain"] == 2 and jobs["unlearn"] == 13
    assert not {"acquire", "preprocess", "split", "forget_set", "matched_negatives"} & set(jobs)


def test_adding_a_budget_to_a_ladder_reruns_only_its_own_jobs(study):
    """The tiny study's fine-tuning ladder gets a third budget: its one new variant is unlearned and audited, the
    summary and report redone; no other variant's unlearning or audit reruns (each rung of a ladder is compared
    with the fine-tuning control of its own budget, so the others' inputs do not change)."""
    repo, work, args = study
    cfg = yaml.safe_load((repo / "tiny.yaml").read_text())
    cfg["methods"]["finetune_ladder"]["budgets"].append(1.0)
    more = repo / "tiny_more.yaml"
    more.write_text(yaml.safe_dump(cfg))
    r = _snakemake([*[a if a != str(repo / "tiny.yaml") else str(more) for a in args], "-n"], work)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert _jobs(r.stdout + r.stderr) == {"unlearn": 1, "audit_method": 1, "aggregate": 1, "report": 1, "all": 1}
    assert "models/finetune_ladder@b1/scattered/seed0.pt" in r.stdout


def test_editing_preprocessing_reruns_preprocess_but_not_acquire(study):
    jobs = _after_editing(study, "data/preprocess.py")
    assert jobs.get("preprocess") == 1 and "acquire" not in jobs


def _after_deleting(study, relpath: str) -> dict[str, int]:
    """The plan after deleting one output of the up-to-date study (put back and re-dated after)."""
    repo, work, args = study
    f = work / relpath
    assert f.exists(), relpath
    f.unlink()
    try:
        r = _snakemake([*args, "-n"], work)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        return _jobs(r.stdout + r.stderr)
    finally:
        f.touch()
        _snakemake([*args, "--touch"], work)


@pytest.mark.parametrize(("record", "rule", "count"), [
    ("results/tiny/models/retrain/scattered/seed0.cells.npz.sha256", "retrain", 1),
    ("results/tiny/splits/scattered.json.sha256", "forget_set", 1),
    ("results/tiny/audit/scattered/baseline/seed0.json.sha256", "audit", 1),
])
def test_deleting_a_digest_record_reruns_the_job_that_writes_it(study, record, rule, count):
    """The records the readers verify are declared outputs (and targets): deleting one is never a silent
    'Nothing to be done', nor a later stage reading an unverifiable file."""
    jobs = _after_deleting(study, record)
    assert jobs.get(rule) == count and jobs.get("aggregate") == 1, jobs


def test_unlearn_code_inputs_are_per_method():
    scrub, _ = codedeps.stage_imports("scunlearn.stages.unlearn:stage_unlearn", ["scunlearn.methods.scrub"])
    fisher, _ = codedeps.stage_imports("scunlearn.stages.unlearn:stage_unlearn", ["scunlearn.methods.fisher"])
    assert "scunlearn.methods.scrub" in scrub and "scunlearn.methods.fisher" not in scrub
    assert "scunlearn.methods.fisher" in fisher and "scunlearn.methods.scrub" not in fisher
    assert "scunlearn.methods.common" in scrub  # what the method imports, followed
    train, _ = codedeps.stage_imports("scunlearn.stages.train:stage_train_ensemble")
    assert {"scunlearn.vae.optim", "scunlearn.vae.batched", "scunlearn.vae.likelihood"} <= train
    assert not any(m.startswith("scunlearn.methods") for m in train)
    split, third = codedeps.stage_imports("scunlearn.stages.data:stage_split")
    assert not any(m.startswith("scunlearn.vae") for m in split)  # a data stage depends on no model code


def test_codedeps_follows_imports_in_functions_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "scunlearn"
    (pkg / "stages").mkdir(parents=True)
    for f in ("__init__.py", "stages/__init__.py", "a.py", "b.py", "c.py", "d.py"):
        (pkg / f).write_text("")
    (pkg / "a.py").write_text("def f():\n    from scunlearn import b\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from scunlearn import d\n")
    (pkg / "stages/s.py").write_text("import scunlearn.c\n\ndef helper():\n    from scunlearn.a import f\n\n"
                                     "def stage_x():\n    helper()\n\ndef stage_y():\n    pass\n")
    x, _ = codedeps.stage_imports("scunlearn.stages.s:stage_x", src=tmp_path)
    y, _ = codedeps.stage_imports("scunlearn.stages.s:stage_y", src=tmp_path)
    assert {"scunlearn.a", "scunlearn.b", "scunlearn.c"} <= x and "scunlearn.d" not in x
    assert "scunlearn.a" not in y and "scunlearn.c" in y  # stage_y calls no helper; the top level counts
