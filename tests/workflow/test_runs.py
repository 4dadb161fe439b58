"""Issue 12 — trust the run: the config given is the config, bad values are refused by name,
changed or missing data is noticed, and a stage's error reaches the terminal.

Snakemake runs here start from the repository root, as a user types the README's commands.
Each writes only to its own results/<unique run>/ and removes it afterwards, so parallel
test sessions and a user's own results/ are never touched.
"""

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import yaml
from scipy.io import mmwrite

from scunlearn import ScunlearnError
from scunlearn.io import write_h5ad

ROOT = Path(__file__).resolve().parents[1]
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


def _counts_h5ad(path: Path, seed: int, n_cells=40, n_genes=12, var_names=None) -> Path:
    rng = np.random.default_rng(seed)
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)))
    a.obs_names = [f"cell{i}" for i in range(n_cells)]
    a.var_names = var_names or [f"G{j}" for j in range(n_genes)]
    write_h5ad(a, path)
    return path


# ------------------------------------------------------------------ item 1: --configfile replaces

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

    # the shipped tiny study: 2 variants x 2 forget sets + fisher, retain_finetune and sisa on one = 7
    # (more if config/config.yaml's variants were merged in)
    tiny = _write(tmp_path / "tiny.yaml", _tiny(run_name))
    assert _job_counts((r := _smk(["-n", "--forceall", "--configfile", str(tiny)])).stdout)["unlearn"] == 7, r.stderr
    # and the same from another working directory
    r = _smk(["-n", "--forceall", "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(path),
              "--directory", str(tmp_path)], cwd=tmp_path)
    assert _job_counts(r.stdout)["unlearn"] == 1, r.stderr[-3000:]
    assert not (ROOT / "results" / run_name).exists()  # a dry run writes nothing


# ------------------------------------------------------------------ item 3: the data file is an input

@pytest.mark.workflow
def test_changed_data_file_reruns_acquire_from_repo_root(tmp_path, run_name):
    data = _counts_h5ad(tmp_path / "mydata.h5ad", seed=1)
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
    _counts_h5ad(data, seed=2)
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


# ------------------------------------------------------------------ item 4: deleted results are rebuilt

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


def test_truncated_checkpoint_says_to_delete_it(tmp_path):
    from scunlearn.vae.checkpoints import load_checkpoint, save_checkpoint
    from scunlearn.vae.model import VAEConfig, build_vae

    p = tmp_path / "seed0.pt"
    save_checkpoint(build_vae(VAEConfig(n_genes=10, hidden=[4], latent=2)), p, {"kind": "baseline"})
    p.write_bytes(p.read_bytes()[:100])  # an interrupted copy
    p.with_name("seed0.pt.sha256").unlink(missing_ok=True)  # no digest recorded: the loader notices
    with pytest.raises(ScunlearnError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert str(p) in msg and "not a readable scunlearn checkpoint" in msg and "delete it" in msg


# ------------------------------------------------------------------ item 5: duplicate gene names

def test_duplicate_gene_names_are_summed_and_logged(tmp_path, caplog):
    from scunlearn.data.acquire import read_user_file

    names = ["CD3D", "PF4", "CD3D", "G3", "PF4", "G5"]
    p = _counts_h5ad(tmp_path / "dups.h5ad", seed=0, n_genes=6, var_names=names)
    X = ad.read_h5ad(p).X.toarray()
    with caplog.at_level(logging.WARNING):
        out = read_user_file(p, "h5ad")
    assert list(out.var_names) == ["CD3D", "PF4", "G3", "G5"]  # never renamed to CD3D-1
    got = out.X.toarray()
    assert np.array_equal(got[:, 0], X[:, 0] + X[:, 2]) and np.array_equal(got[:, 1], X[:, 1] + X[:, 4])
    assert np.array_equal(got[:, 2], X[:, 3])
    assert "2 gene names occur more than once (CD3D, PF4)" in caplog.text and "summed" in caplog.text
    assert str(p) in caplog.text


def test_duplicate_gene_names_refused_when_asked(tmp_path):
    from scunlearn.data.acquire import read_user_file

    p = _counts_h5ad(tmp_path / "dups.h5ad", seed=0, n_genes=3, var_names=["A", "B", "A"])
    with pytest.raises(ScunlearnError) as e:
        read_user_file(p, "h5ad", duplicate_genes="error")
    assert str(p) in str(e.value) and "dataset.duplicate_genes" in str(e.value) and "(A)" in str(e.value)


def test_duplicate_symbols_of_a_10x_folder_are_summed(tmp_path):
    from scunlearn.data.acquire import read_user_file

    d = tmp_path / "mtx"
    d.mkdir()
    mmwrite(d / "matrix.mtx", sp.coo_matrix(np.array([[1, 2], [3, 4], [5, 6]])))  # genes x cells
    (d / "genes.tsv").write_text("ENSG1\tCD3D\nENSG2\tCD3D\nENSG3\tPF4\n")
    (d / "barcodes.tsv").write_text("AAAC-1\nAAAG-1\n")
    out = read_user_file(d, "10x_mtx")
    assert list(out.var_names) == ["CD3D", "PF4"]
    assert out.X.toarray().tolist() == [[4, 5], [6, 6]]


# ------------------------------------------------------------------ item 6: the PBMC-33k archive's digest

def _fake_archive(path: Path, n_cells=6, n_genes=4) -> Path:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    mmwrite(buf, sp.coo_matrix(rng.integers(1, 5, size=(n_genes, n_cells))))
    files = {"matrix.mtx": buf.getvalue(),
             "genes.tsv": "".join(f"ENSG{i}\tGENE{i}\n" for i in range(n_genes)).encode(),
             "barcodes.tsv": "".join(f"AAAC{i}-1\n" for i in range(n_cells)).encode()}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"filtered_gene_bc_matrices/hg19/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _checksums(tmp_path, sha="", n_cells=6, n_genes=4) -> Path:
    from scunlearn.data.acquire import PBMC33K_ARCHIVE

    p = tmp_path / "checksums.tsv"
    pd.DataFrame([{"file": PBMC33K_ARCHIVE, "url": "x", "sha256": sha, "n_cells": n_cells, "n_genes": n_genes}]) \
        .to_csv(p, sep="\t", index=False)
    return p


def test_first_download_pins_the_archive_digest(tmp_path, caplog):
    from scunlearn.data.acquire import PBMC33K_ARCHIVE, fetch_pbmc33k, load_checksums
    from scunlearn.io import sha256sum

    src = _fake_archive(tmp_path / "mirror.tar.gz")
    sums = _checksums(tmp_path)
    with caplog.at_level(logging.WARNING):
        fetch_pbmc33k(tmp_path / "res", sums, url=src.as_uri())
    assert load_checksums(sums).loc[PBMC33K_ARCHIVE, "sha256"] == sha256sum(src)
    assert "pinned" in caplog.text and "Commit that file" in caplog.text and str(sums) in caplog.text
    assert not list((tmp_path / "res").glob(".extract-*"))  # nothing extracted is left behind


def test_archive_with_wrong_digest_is_refused_and_deleted(tmp_path):
    from scunlearn.data.acquire import PBMC33K_ARCHIVE, fetch_pbmc33k

    res = tmp_path / "res"
    res.mkdir()
    cached = _fake_archive(res / PBMC33K_ARCHIVE)  # e.g. a wrong archive cached by an earlier run
    sums = _checksums(tmp_path, sha="0" * 64)
    with pytest.raises(ScunlearnError) as e:
        fetch_pbmc33k(res, sums, url="file:///nowhere")
    msg = str(e.value)
    assert not cached.exists()
    assert "checksum mismatch" in msg and str(cached) in msg and str(sums) in msg
    assert "has been deleted" in msg and "rerun snakemake" in msg and "file:///nowhere" in msg


def test_archive_of_the_wrong_shape_is_refused_deleted_and_not_pinned(tmp_path):
    from scunlearn.data.acquire import PBMC33K_ARCHIVE, fetch_pbmc33k, load_checksums

    src = _fake_archive(tmp_path / "mirror.tar.gz")
    sums = _checksums(tmp_path, n_cells=33148, n_genes=32738)
    with pytest.raises(ScunlearnError, match="holds 6 cells x 4 genes, expected 33148 x 32738"):
        fetch_pbmc33k(tmp_path / "res", sums, url=src.as_uri())
    assert not (tmp_path / "res" / PBMC33K_ARCHIVE).exists()
    assert load_checksums(sums).loc[PBMC33K_ARCHIVE, "sha256"] == ""


def test_download_stage_then_acquire_pins_and_reads_the_archive(tmp_path):
    """The two rules' stages in order: pbmc33k_archive downloads, acquire verifies, pins and reads."""
    from scunlearn.data.acquire import PBMC33K_ARCHIVE, load_checksums
    from scunlearn.io import sha256sum
    from scunlearn.stages.data import stage_acquire, stage_download

    src = _fake_archive(tmp_path / "mirror.tar.gz")
    res = tmp_path / "res"
    stage_download({}, {"archive": str(res / PBMC33K_ARCHIVE)}, {"url": src.as_uri()}, 1)
    assert sha256sum(res / PBMC33K_ARCHIVE) == sha256sum(src)
    sums = _checksums(tmp_path)
    stage_acquire({"data": [str(res / PBMC33K_ARCHIVE)], "markers": str(ROOT / "resources/markers/pbmc.tsv")},
                  {"raw": str(tmp_path / "raw.h5ad")},
                  {"dataset": {"source": "pbmc33k", "url": src.as_uri()}, "resources_dir": str(res),
                   "checksums": str(sums)}, 1)
    raw = ad.read_h5ad(tmp_path / "raw.h5ad")
    assert raw.shape == (6, 4) and raw.uns["source_sha256"] == sha256sum(src)
    assert load_checksums(sums).loc[PBMC33K_ARCHIVE, "sha256"] == sha256sum(src)


# ------------------------------------------------------------------ item 7 and the schema crashes: parse time

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


def test_device_cuda_without_cuda_names_the_key(monkeypatch):
    from scunlearn.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto") == torch.device("cpu")  # auto falls back
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ScunlearnError) as e:
            resolve_device(spec)
        assert f"config device: '{spec}'" in str(e.value) and "no usable CUDA GPU" in str(e.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ScunlearnError, match=r"'cuda:1' asked for, but only 1 CUDA GPU\(s\) found"):
        resolve_device("cuda:1")


def test_unknown_cell_type_lists_types_and_says_they_are_data_derived(processed, tmp_path):
    from scunlearn.data.splits import make_split
    from scunlearn.io import write_json
    from scunlearn.stages.data import stage_forget

    adata = tmp_path / "adata.h5ad"
    write_h5ad(processed, adata)
    write_json(make_split(processed.obs_names, 0.85, 0.5, seed=0), tmp_path / "split.json")
    with pytest.raises(ScunlearnError) as e:
        stage_forget({"adata": str(adata), "split": str(tmp_path / "split.json")}, {"forget": str(tmp_path / "f.json")},
                     {"name": "rare", "spec": {"kind": "cell_type", "cell_type": "Unicorn"}, "seed": 0}, 1)
    msg = str(e.value)
    assert "forget_sets.rare" in msg and "'Unicorn' does not exist" in msg
    assert "'Megakaryocyte'" in msg and "'B cell'" in msg  # the available types
    assert "data-derived" in msg and "only after preprocessing" in msg
    assert not (tmp_path / "f.json").exists()


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


# ------------------------------------------------------------------ clusters with no convincing marker score

def test_cluster_below_min_marker_score_is_unknown(markers, caplog):
    from scunlearn.data.preprocess import annotate_clusters

    rng = np.random.default_rng(0)
    mk = markers.groupby("cell_type")["gene"].apply(list)
    genes = sorted(set(markers["gene"]))
    # three clusters of 30 cells: B-cell markers high, Megakaryocyte markers high, neither
    X = rng.normal(1.0, 0.1, size=(90, len(genes)))
    col = {g: j for j, g in enumerate(genes)}
    X[:30, [col[g] for g in mk["B cell"]]] += 3
    X[30:60, [col[g] for g in mk["Megakaryocyte"]]] += 3
    X[60:] -= 0.5  # every marker below average: no type fits (best score negative)
    a = ad.AnnData(X=X.astype(np.float32))
    a.var_names = genes
    a.obs["leiden"] = pd.Categorical(np.repeat(["0", "1", "2"], 30))
    with caplog.at_level(logging.WARNING):
        labels = annotate_clusters(a, markers)  # default threshold 0: cluster 2 scores below it
    assert labels.iloc[0] == "B cell" and labels.iloc[30] == "Megakaryocyte" and labels.iloc[60] == "unknown"
    assert "cluster 2 (30 cells) -> unknown" in caplog.text and "preprocess.min_marker_score" in caplog.text
    # a higher threshold turns a weakly-scoring cluster unknown too; a very low one labels everything
    assert set(annotate_clusters(a, markers, min_score=100.0)) == {"unknown"}
    assert "unknown" not in set(annotate_clusters(a, markers, min_score=-100.0))


# ------------------------------------------------------------------ issue 26: trust the input

def test_variant_with_no_forget_sets_is_refused_naming_it(tmp_path):
    """Silent case 3: `forget_sets: []` dropped the variant from the study without a word."""
    cfg = _tiny("pytest-never-runs")
    cfg["methods"]["fisher"]["forget_sets"] = []
    path = _write(tmp_path / "empty.yaml", cfg)
    r = _smk(["-n", "--configfile", str(path)], timeout=120)
    text = r.stdout + r.stderr
    assert r.returncode != 0, text[-2000:]
    assert f"config methods.fisher.forget_sets ({path}): an empty list" in text
    assert "variant 'fisher' would run on no forget set" in text and "leave the key out" in text


def test_unknown_top_level_key_is_told_in_a_few_lines(tmp_path):
    """An unknown key printed the whole JSON schema (~470 lines); now the file, key, value and reason."""
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


def _vae(seed: int):
    from scunlearn.vae.model import VAEConfig, build_vae

    torch.manual_seed(seed)
    return build_vae(VAEConfig(n_genes=10, hidden=[4], latent=2))


@pytest.mark.parametrize("change", ["truncated", "replaced"])
def test_changed_checkpoint_with_its_old_time_is_refused(tmp_path, change):
    """Silent case 4: a checkpoint changed behind Snakemake's back (time stamp kept) was used or misreported."""
    from scunlearn.vae.checkpoints import load_checkpoint, save_checkpoint

    p = tmp_path / "seed0.pt"
    save_checkpoint(_vae(0), p, {"kind": "baseline"})
    assert (tmp_path / "seed0.pt.sha256").read_text().endswith("  seed0.pt\n")  # `sha256sum -c` format
    load_checkpoint(p)  # unchanged: loads
    st = p.stat()
    if change == "truncated":
        p.write_bytes(p.read_bytes()[:-200])
    else:  # another run's checkpoint, a valid file copied over this one
        save_checkpoint(_vae(1), tmp_path / "other.pt", {"kind": "baseline"})
        shutil.copyfile(tmp_path / "other.pt", p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ScunlearnError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: the file changed since it was written") and f"{p}.sha256 records" in msg
    assert "delete it and rerun snakemake" in msg


def test_changed_h5ad_is_refused_by_every_reader(processed, tmp_path):
    from scunlearn.io import read_adata, read_cells, write_h5ad
    from scunlearn.stages.data import stage_split

    p = tmp_path / "adata.h5ad"
    write_h5ad(processed, p)
    read_cells(p)
    st = p.stat()
    write_h5ad(processed[:50].copy(), tmp_path / "other.h5ad")
    p.write_bytes((tmp_path / "other.h5ad").read_bytes())  # edited in place, the old time stamp put back
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    for read in (read_cells, read_adata,
                 lambda f: stage_split({"adata": str(f)}, {"split": str(tmp_path / "s.json")},
                                       {"splits": {"train_fraction": 0.8, "validation_fraction": 0.5}, "seed": 0}, 1)):
        with pytest.raises(ScunlearnError, match="the file changed since it was written"):
            read(p)
    assert not (tmp_path / "s.json").exists()


def _audit_inputs(text: str, wanted: str) -> str:
    """The inputs of the dry-run audit job that writes ``wanted``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("rule audit:") and lines[i + 1].strip().startswith("input:") \
                and lines[i + 2].strip() == f"output: results/pytest-never-runs/{wanted}":
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
            "sets, so changing its params also reruns every audit on those forget sets") in docs


def test_troubleshooting_table_lists_the_new_messages():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Troubleshooting"):readme.index("## Development")]
    for message in ("the file changed since it was written", "that look normalised", "an empty list, so variant",
                    "unknown key 'NAME'", "The 'counts' layer is read whenever the file has one",
                    "neither X nor .raw holds raw counts", "unreadable h5ad (…); it may be truncated or corrupt",
                    "X was read because the file has no layers['counts'] and no .raw"):
        assert message in table, message
