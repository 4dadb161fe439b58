"""Snakemake runs as a user starts them: the config given is the config, files the study reads are inputs
(changed or deleted ones are rebuilt), bad config values are refused at parse time naming key and file,
and a stage's error reaches the terminal. Stage-level checks of the same inputs live with their layer
(tests/data/test_acquire.py, tests/data/test_data.py, tests/vae/test_checkpoints.py).

Snakemake runs here start from the repository root, as a user types the README's commands.
Each writes only to its own results/<unique run>/ and removes it afterwards, so parallel
test sessions and a user's own results/ are never touched.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from scunlearn.io import write_h5ad
from tests.conftest import write_counts_h5ad

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _smk(args, cwd=ROOT, timeout=1800):
    return subprocess.run(SNAKEMAKE + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _job_counts(text: str) -> dict[str, int]:
    """Rule -> job count from Snakemake's 'Job stats' table (dry-run output)."""
    counts = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("job ") and line.split()[-1] == "count":
            for row in lines[i + 2:]:
                parts = row.split()
                if len(parts) != 2 or not parts[1].isdigit():
                    break
                counts[parts[0]] = int(parts[1])
            break
    return counts


@pytest.fixture
def run_name():
    """A unique run name whose results/<name>/ is removed after the test."""
    name = f"pytest-{uuid.uuid4().hex[:12]}"
    yield name
    shutil.rmtree(ROOT / "results" / name, ignore_errors=True)


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _tiny(run: str, **top) -> dict:
    cfg = yaml.safe_load((ROOT / "tests/data/tiny.yaml").read_text())
    cfg["run"] = run
    cfg.update(top)
    return cfg


# A study small enough to run every rule in about a minute on 2 cores.
def _micro(run: str) -> dict:
    return {
        "run": run, "seed": 0, "device": "cpu",
        "dataset": {"source": "simulate", "simulate": {"n_cells": 600, "n_genes": 300, "seed": 5}},
        "preprocess": {"min_genes": 20, "n_hvg": 120, "n_pcs": 10, "neighbors_pcs": 10},
        "forget_sets": {"scattered": {"kind": "random", "n": 15}},
        "matched": {"k": 3, "min_matched": 30},
        "model": {"hidden": [8], "latent": 2, "dropout": 0.1},
        "train": {"seeds": [0], "max_epochs": 1, "kl_warmup_epochs": 0, "patience": 1},
        "audit": {"reference_seeds": [1, 2], "bootstrap": 10,
                  "attacks": {"per_cell": {}, "mlp": {"folds": 2, "repeats": 1,
                                                      "attacker": {"hidden": [4], "epochs": 2}}},
                  "utility": {"max_cells": 50, "folds": 2}},
        "methods": {"fisher": {"method": "fisher", "params": {"steps": 1, "fisher_cells": 50, "finetune_epochs": 1}}},
    }


# ------------------------------------------------------------------ --configfile replaces the default config

@pytest.mark.workflow
def test_configfile_replaces_default_config_from_repo_root(tmp_path, run_name):
    """One forget set and one method, one seed: exactly one unlearn job, whatever the directory."""
    cfg = _tiny(run_name)
    cfg["forget_sets"] = {"mine": {"kind": "random", "n": 10}}
    cfg["methods"] = {"only": {"method": "fisher", "params": {"steps": 1}}}
    path = _write(tmp_path / "mine.yaml", cfg)

    r = _smk(["-n", "--forceall", "--configfile", str(path)])  # from the repository root
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-3000:]
    assert "is extended by" not in text
    counts = _job_counts(text)
    # one retrain job (train.ensemble) for the one forget set: train seed 0 + the tiny study's two reference seeds
    assert counts["unlearn"] == 1 and counts["retrain"] == 1 and counts["forget_set"] == 1
    assert "seed0.cells.npz" in text and "seed2.cells.npz" in text
    assert "Megakaryocyte" not in text and "structured" not in text  # nothing of config/config.yaml

    # the shipped tiny study: 2 variants x 2 forget sets + fisher, retain_finetune, the fine-tuning ladder's 2 budgets,
    # sisa, salun, simnpo and selective_amnesia on one = 12 (more if config/config.yaml's variants were merged in)
    tiny = _write(tmp_path / "tiny.yaml", _tiny(run_name))
    assert _job_counts((r := _smk(["-n", "--forceall", "--configfile", str(tiny)])).stdout)["unlearn"] == 12, r.stderr
    # and the same from another working directory
    r = _smk(["-n", "--forceall", "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(path),
              "--directory", str(tmp_path)], cwd=tmp_path)
    assert _job_counts(r.stdout)["unlearn"] == 1, r.stderr[-3000:]
    assert not (ROOT / "results" / run_name).exists()  # a dry run writes nothing


# ------------------------------------------------------------------ the data file is an input

@pytest.mark.workflow
def test_changed_data_file_reruns_acquire_from_repo_root(tmp_path, run_name):
    data = write_counts_h5ad(tmp_path / "mydata.h5ad", seed=1)
    cfg = _tiny(run_name, dataset={"source": "h5ad", "path": str(data)})
    path = _write(tmp_path / "cfg.yaml", cfg)
    raw = f"results/{run_name}/data/raw.h5ad"

    r = _smk([raw, "--cores", "1", "--configfile", str(path)])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    first = ad.read_h5ad(ROOT / raw).X.toarray()
    assert np.array_equal(first, ad.read_h5ad(data).X.toarray())
    r = _smk([raw, "-n", "--configfile", str(path)])
    assert "Nothing to be done" in r.stdout + r.stderr

    # the user replaces the data file (same name): acquire must rerun, and preprocess after it
    write_counts_h5ad(data, seed=2)
    # mtimes can share a second with the first run's outputs: age those outputs rather than
    # dating the input into the future (Snakemake refuses outputs older than their inputs)
    for f in (ROOT / "results" / run_name).rglob("*"):
        if f.is_file():
            past = f.stat().st_mtime - 10
            os.utime(f, (past, past))
    r = _smk([raw, "-n", "--quiet", "rules", "--configfile", str(path)])
    assert "acquire" in r.stdout + r.stderr
    r = _smk([raw, "--cores", "1", "--configfile", str(path)])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    second = ad.read_h5ad(ROOT / raw).X.toarray()
    assert np.array_equal(second, ad.read_h5ad(data).X.toarray()) and not np.array_equal(first, second)


def test_missing_data_file_fails_at_parse_time_naming_key_and_file(tmp_path):
    cfg = _tiny("pytest-never-runs", dataset={"source": "h5ad", "path": str(tmp_path / "gone.h5ad")})
    path = _write(tmp_path / "cfg.yaml", cfg)
    r = _smk(["-n", "--configfile", str(path)], timeout=120)
    text = r.stdout + r.stderr
    assert r.returncode != 0
    assert "dataset.path" in text and "gone.h5ad" in text and str(path) in text


def test_pbmc_archive_is_an_input_made_by_its_own_rule(tmp_path):
    """The cached PBMC-33k archive is a file input of acquire, not a string parameter."""
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["run"] = "pytest-never-runs"
    path = _write(tmp_path / "pbmc.yaml", cfg)
    r = _smk(["-n", "--forceall", "--configfile", str(path), "--printshellcmds"], timeout=120)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-3000:]
    assert _job_counts(text).get("pbmc33k_archive") == 1
    acquire = text[text.index("rule acquire:"):]
    acquire = acquire[: acquire.index("\n\n")]
    assert "input:" in acquire and "resources/pbmc33k/pbmc33k_filtered_gene_bc_matrices.tar.gz" in acquire


# ------------------------------------------------------------------ deleted results are rebuilt

@pytest.mark.workflow
def test_deleted_checkpoint_and_audit_are_rebuilt_from_repo_root(tmp_path, run_name):
    path = _write(tmp_path / "micro.yaml", _micro(run_name))
    out = ROOT / "results" / run_name
    r = _smk(["--cores", "2", "--configfile", str(path)])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    summary = out / "report/summary.tsv"
    assert set(pd.read_csv(summary, sep="\t")["variant"]) == {"baseline", "retrain", "fisher"}
    assert "Nothing to be done" in _smk(["-n", "--configfile", str(path)]).stdout

    # a reference seed's checkpoint: no job reads it (the audit reads its .cells.npz), so only
    # rule all's targets bring it back; put back afterwards, its time kept, to keep the test short
    ref = out / "models/retrain/scattered/seed2.pt"
    kept = tmp_path / "ref.pt"
    shutil.copy2(ref, kept)
    ref.unlink()
    r = _smk(["-n", "--quiet", "rules", "--configfile", str(path)])
    assert "Nothing to be done" not in r.stdout + r.stderr and "retrain" in r.stdout + r.stderr
    shutil.copy2(kept, ref)
    assert "Nothing to be done" in _smk(["-n", "--configfile", str(path)]).stdout

    model = out / "models/fisher/scattered/seed0.pt"
    audit = out / "audit/scattered/retrain/seed0.json"
    model.unlink()
    audit.unlink()
    r = _smk(["-n", "--quiet", "rules", "--configfile", str(path)])
    text = r.stdout + r.stderr
    assert "Nothing to be done" not in text
    for rule in ("unlearn", "audit", "aggregate", "report"):
        assert rule in text
    before = summary.stat().st_mtime
    r = _smk(["--cores", "2", "--configfile", str(path)])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert model.exists() and audit.exists()
    assert summary.stat().st_mtime > before  # the summary was rebuilt from the rebuilt audits
    rec = json.loads((out / "audit/scattered/fisher/seed0.json").read_text())
    assert rec["model"].endswith("models/fisher/scattered/seed0.pt") and (ROOT / rec["model"]).exists()


# ------------------------------------------------------------------ bad values are refused at parse time

@pytest.mark.parametrize("change, expected", [
    ({"run": ".."}, ["'..' does not match", "key:    run"]),
    ({"run": "../elsewhere"}, ["does not match", "key:    run"]),
    ({"run": "."}, ["does not match", "key:    run"]),
    ({"forget_sets": {"scattered": {"kind": "random"}}},
     ["'n' is a required property", "key:    forget_sets.scattered"]),
    ({"forget_sets": {"structured": {"kind": "cell_type"}}},
     ["'cell_type' is a required property", "key:    forget_sets.structured"]),
    ({"forget_sets": {"c": {"kind": "cluster"}}}, ["'cluster' is a required property", "key:    forget_sets.c"]),
])
def test_bad_values_are_refused_at_parse_time_naming_key_and_file(tmp_path, change, expected):
    cfg = _tiny("pytest-never-runs")
    cfg.update(change)
    if "forget_sets" in change:
        for v in cfg["methods"].values():
            v.pop("forget_sets", None)
    path = _write(tmp_path / "bad.yaml", cfg)
    r = _smk(["-n", "--configfile", str(path)], timeout=120)
    text = r.stdout + r.stderr
    assert r.returncode != 0
    for e in expected:
        assert e in text, text[-2000:]
    assert str(path) in text  # the file the bad value came from


def test_plain_run_names_with_dots_are_accepted(tmp_path):
    path = _write(tmp_path / "ok.yaml", _tiny("pytest.v1-run_2"))
    r = _smk(["-n", "--configfile", str(path)], timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]


# ------------------------------------------------------------------ errors reach the terminal

@pytest.mark.workflow
def test_stage_error_reaches_the_terminal_and_traceback_stays_in_log(tmp_path, run_name):
    bad = tmp_path / "logged.h5ad"
    a = ad.AnnData(X=np.array([[1.0, 2.5], [0.0, 1.0]], dtype=np.float32))  # normalised, not counts
    a.obs_names, a.var_names = ["c0", "c1"], ["g0", "g1"]
    write_h5ad(a, bad)
    path = _write(tmp_path / "cfg.yaml", _tiny(run_name, dataset={"source": "h5ad", "path": str(bad)}))
    r = _smk([f"results/{run_name}/data/raw.h5ad", "--cores", "1", "--configfile", str(path)])
    text = r.stdout + r.stderr
    assert r.returncode != 0
    line = next((ln for ln in text.splitlines() if ln.startswith("scunlearn acquire error:")), "")
    assert f"{bad}: non-integer values in the matrix" in line and "Traceback" not in line
    assert f"results/{run_name}/logs/acquire.log" in line
    logtext = (ROOT / "results" / run_name / "logs/acquire.log").read_text()
    assert "Traceback" in logtext and "non-integer values" in logtext


def test_shipped_profile_shows_failed_logs():
    prof = yaml.safe_load((ROOT / "profiles/local/config.yaml").read_text())
    assert prof["show-failed-logs"] is True


# ------------------------------------------------------------------ config mistakes in a few lines; what reruns

def test_variant_with_no_forget_sets_is_refused_naming_it(tmp_path):
    """`forget_sets: []` is refused naming the variant: it would otherwise drop out of the study unannounced."""
    cfg = _tiny("pytest-never-runs")
    cfg["methods"]["fisher"]["forget_sets"] = []
    path = _write(tmp_path / "empty.yaml", cfg)
    r = _smk(["-n", "--configfile", str(path)], timeout=120)
    text = r.stdout + r.stderr
    assert r.returncode != 0, text[-2000:]
    assert f"config methods.fisher.forget_sets ({path}): an empty list" in text
    assert "variant 'fisher' would run on no forget set" in text and "leave the key out" in text


def test_unknown_top_level_key_is_told_in_a_few_lines(tmp_path):
    """An unknown key is told as its file, key, value and reason in a few lines, not as the whole JSON schema."""
    path = _write(tmp_path / "typo.yaml", _tiny("pytest-never-runs", sede=3))
    r = _smk(["-n", "--configfile", str(path)], timeout=120)
    text = r.stdout + r.stderr
    assert r.returncode != 0
    block = text[text.index(f"in config {path}:"):]
    assert block.splitlines()[1:4] == ["  key:    sede", "  value:  3", "  reason: unknown key 'sede'"]
    assert "known keys here:" in block and "seed" in block
    assert "$schema" not in text and "additionalProperties" not in text and len(text.splitlines()) < 20


def test_unknown_nested_key_names_its_path(tmp_path):
    cfg = _tiny("pytest-never-runs")
    cfg["dataset"]["acept_normalised_looking"] = True
    r = _smk(["-n", "--configfile", str(_write(tmp_path / "typo.yaml", cfg))], timeout=120)
    text = r.stdout + r.stderr
    assert "key:    dataset.acept_normalised_looking" in text and "accept_normalised_looking" in text


def _audit_inputs(text: str, wanted: str) -> str:
    """The inputs of the dry-run audit job that writes ``wanted``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("rule audit:", "rule audit_method:")) and lines[i + 1].strip().startswith("input:") \
                and lines[i + 2].strip() in (f"output: results/pytest-never-runs/{wanted}",  # with its digest record
                                             f"output: results/pytest-never-runs/{wanted}, "
                                             f"results/pytest-never-runs/{wanted}.sha256"):
            return lines[i + 1]
    raise AssertionError(f"no audit job writing {wanted}")


def test_fine_tuning_control_reruns_every_audit_on_its_set_as_the_docs_say(tmp_path):
    """config/README.md said changing one variant's params reruns only that variant's audits; a retain_finetune
    variant is every audit's control on its forget sets, so its changes rerun them all (correctly)."""
    path = _write(tmp_path / "tiny.yaml", _tiny("pytest-never-runs"))
    r = _smk(["-n", "--forceall", "--configfile", str(path)], timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    control = "models/retain_finetune/scattered/seed0.cells.npz"
    for model in ("baseline", "retrain", "fisher", "sisa"):
        assert control in _audit_inputs(r.stdout, f"audit/scattered/{model}/seed0.json")
    assert control not in _audit_inputs(r.stdout, "audit/structured/baseline/seed0.json")
    docs = " ".join((ROOT / "config/README.md").read_text().split())
    assert "reruns only that variant's jobs, its audits and the report" not in docs
    assert ("except for a `retain_finetune` variant: it is the fine-tuning control of every audit on its forget "
            "sets at its budget, so changing its params also reruns the audits it controls") in docs


def test_troubleshooting_table_lists_the_input_error_messages():
    """The README's troubleshooting table quotes the messages of the input and checkpoint checks."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Troubleshooting"):readme.index("## Development")]
    for message in ("the file changed since it was written", "that look normalised", "an empty list, so variant",
                    "unknown key 'NAME'", "The 'counts' layer is read whenever the file has one",
                    "neither X nor .raw holds raw counts", "unreadable h5ad (…); it may be truncated or corrupt",
                    "X was read because the file has no layers['counts'] and no .raw"):
        assert message in table, message
