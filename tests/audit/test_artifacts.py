"""Every file a verdict is computed from is the one its stage wrote: per-cell statistics, split and
forget-set records are refused when edited (time stamp kept, so Snakemake would not notice) or when
their digest record is missing, with the command that rebuilds them."""

import json
import os

import numpy as np
import pytest
import torch

from scunlearn import ScunlearnError
from scunlearn.data.splits import load_partition, make_split, save_split
from scunlearn.io import digest_path, read_json, write_json
from scunlearn.vae.cellstats import read_cell_stats, write_cell_stats
from scunlearn.vae.model import VAEConfig, build_vae


def _keep_time(path, edit):
    """Apply ``edit`` to ``path`` and put its time stamps back."""
    st = os.stat(path)
    edit(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def cells(tmp_path):
    torch.manual_seed(0)
    model = build_vae(VAEConfig(n_genes=6, hidden=[4], latent=2))
    X = torch.poisson(torch.full((30, 6), 3.0))
    barcodes = [f"c{i}" for i in range(30)]
    path = tmp_path / "seed0.cells.npz"
    write_cell_stats(model, X, barcodes, path)
    return path, barcodes


def test_edited_cell_statistics_are_refused(cells):
    path, barcodes = cells
    before = read_cell_stats(path, barcodes)

    def edit(p):  # 24 values of one statistic changed, barcodes digest kept
        with np.load(p) as z:
            arrays = {k: z[k].copy() for k in z.files}
        arrays["elbo"][:24] += 1.0
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)

    _keep_time(path, edit)
    with pytest.raises(ScunlearnError, match="changed since it was written") as e:
        read_cell_stats(path, barcodes)
    assert str(path) in str(e.value) and f"--forcerun {path}" in str(e.value)
    assert len(before["elbo"]) == 30


def test_cell_statistics_without_their_record_are_refused_by_name(cells):
    path, barcodes = cells
    digest_path(path).unlink()
    with pytest.raises(ScunlearnError, match="no digest record") as e:
        read_cell_stats(path, barcodes)
    assert f"--forcerun {path}" in str(e.value)


def test_edited_forget_set_is_refused(processed, tmp_path):
    split = make_split(processed.obs_names, 0.85, 0.5, seed=0)
    save_split(split, tmp_path / "split.json")
    forget = tmp_path / "forget.json"
    write_json({"forget": list(split["train"][:20])}, forget)
    assert len(load_partition(processed, tmp_path / "split.json", forget).forget) == 20

    def edit(p):  # 20 -> 15 cells
        rec = json.loads(p.read_text())
        rec["forget"] = rec["forget"][:15]
        p.write_text(json.dumps(rec, indent=2) + "\n")

    _keep_time(forget, edit)
    with pytest.raises(ScunlearnError, match="forget.json: the file changed since it was written"):
        load_partition(processed, tmp_path / "split.json", forget)


def test_json_without_its_record_is_refused_and_every_writer_records_one(tmp_path):
    p = tmp_path / "matched_x.json"
    write_json({"barcodes": ["a"]}, p)
    assert digest_path(p).read_text().split()[1] == "matched_x.json"  # sha256sum -c format
    assert read_json(p) == {"barcodes": ["a"]}
    digest_path(p).unlink()
    with pytest.raises(ScunlearnError, match="matched_x.json: no digest record"):
        read_json(p)
    with pytest.raises(ScunlearnError, match="nope.json: file not found"):
        read_json(tmp_path / "nope.json")
