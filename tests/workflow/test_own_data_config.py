"""Parse-time checks of a study on the user's own data: too few retrained models for the judge's controls is
refused (audit.allow_small_study lets a smoke run through), and config/own_data.yaml, the template for an own
h5ad, validates and plans its forget sets once its data file exists.

Snakemake runs here are dry runs from the repository root, as a user types them: they write nothing.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from scunlearn.io import write_h5ad
from tests.conftest import write_counts_h5ad

ROOT = Path(__file__).resolve().parents[2]


def _smk(args, timeout=300):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _two_models(tmp_path, **audit) -> Path:
    """The tiny study with train.seeds [0, 1] and no reference seeds: 2 retrained models per forget set."""
    cfg = yaml.safe_load((ROOT / "tests/data/tiny.yaml").read_text())
    cfg["run"] = "pytest-never-runs"
    cfg["train"]["seeds"] = [0, 1]
    cfg["audit"]["reference_seeds"] = []
    cfg["audit"].update(audit)
    return _write(tmp_path / "small.yaml", cfg)


def test_fewer_than_three_retrained_models_are_refused_at_parse_time(tmp_path):
    path = _two_models(tmp_path)
    r = _smk(["-n", "--configfile", str(path)])
    text = r.stdout + r.stderr
    assert r.returncode != 0
    assert "audit.reference_seeds" in text and str(path) in text and "2 retrained models per forget set" in text
    assert "audit.reference_seeds: [100, 101, 102, 103, 104, 105]" in text
    assert "audit.allow_small_study: true" in text


def test_allow_small_study_lets_a_smoke_run_parse_with_a_warning(tmp_path):
    r = _smk(["-n", "--configfile", str(_two_models(tmp_path, allow_small_study=True))])
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-3000:]
    assert "warning:" in text and "audit.allow_small_study: true" in text


def test_the_shipped_studies_have_enough_retrained_models():
    for name in ("config/config.yaml", "config/demo.yaml", "config/own_data.yaml", "tests/data/tiny.yaml"):
        cfg = yaml.safe_load((ROOT / name).read_text())
        n = len(cfg["train"]["seeds"]) + len(cfg["audit"].get("reference_seeds", []))
        assert n >= 3 and not cfg["audit"].get("allow_small_study", False), name


def test_own_data_template_validates_and_stops_at_its_placeholder_file():
    r = subprocess.run([sys.executable, "-m", "scunlearn.configfile", "config/own_data.yaml"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = yaml.safe_load((ROOT / "config/own_data.yaml").read_text())
    assert not (ROOT / cfg["dataset"]["path"]).exists()
    r = _smk(["-n", "--configfile", "config/own_data.yaml"])
    assert r.returncode != 0 and "config dataset.path" in r.stdout + r.stderr and "not found" in r.stdout + r.stderr


def test_own_data_template_plans_its_forget_sets_once_the_file_exists(tmp_path):
    cfg = yaml.safe_load((ROOT / "config/own_data.yaml").read_text())
    assert cfg["preprocess"]["cell_type_key"] == "cell_type"
    kinds = {s["kind"] for s in cfg["forget_sets"].values()}
    assert {"cell_type", "obs"} <= kinds
    assert any(v["method"] == "retain_finetune" for v in cfg["methods"].values())
    n_models = len(cfg["train"]["seeds"]) + len(cfg["audit"]["reference_seeds"])
    assert n_models == 8
    data = write_counts_h5ad(tmp_path / "mine.h5ad", seed=0)
    import anndata as ad

    a = ad.read_h5ad(data)
    a.obs["cell_type"] = pd.Categorical(np.where(np.arange(a.n_obs) % 2, "B cell", "T cell"))
    a.obs["donor"] = [f"donor{i % 2 + 1}" for i in range(a.n_obs)]
    write_h5ad(a, data)
    cfg["run"] = "pytest-never-runs"
    cfg["dataset"]["path"] = str(data)
    r = _smk(["-n", "--forceall", "--configfile", str(_write(tmp_path / "mine.yaml", cfg))])
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-3000:]
    assert "splits/by_donor.json" in text and "splits/by_cell_type.json" in text


@pytest.mark.parametrize("spec, missing", [({"kind": "obs", "key": "donor"}, "values"),
                                           ({"kind": "obs", "values": ["D1"]}, "key")])
def test_an_obs_forget_set_needs_key_and_values(tmp_path, spec, missing):
    cfg = yaml.safe_load((ROOT / "tests/data/tiny.yaml").read_text())
    cfg["run"] = "pytest-never-runs"
    cfg["forget_sets"]["by_donor"] = spec
    r = _smk(["-n", "--configfile", str(_write(tmp_path / "bad.yaml", cfg))])
    text = r.stdout + r.stderr
    assert r.returncode != 0 and "forget_sets.by_donor" in text and f"'{missing}' is a required property" in text
