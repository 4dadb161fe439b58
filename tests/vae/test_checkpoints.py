"""Checkpoints that cannot be trusted are refused with what to do: a truncated file, and a file changed
after it was written (its time stamp put back, so Snakemake would not notice)."""

import os
import shutil

import pytest
import torch

from scunlearn import ScunlearnError
from scunlearn.io import sha256sum
from scunlearn.vae.checkpoints import load_checkpoint, save_checkpoint
from scunlearn.vae.model import VAEConfig, build_vae


def test_truncated_checkpoint_says_to_delete_it(tmp_path):
    p = tmp_path / "seed0.pt"
    save_checkpoint(build_vae(VAEConfig(n_genes=10, hidden=[4], latent=2)), p, {"kind": "baseline"})
    p.write_bytes(p.read_bytes()[:100])  # an interrupted copy
    p.with_name("seed0.pt.sha256").write_text(f"{sha256sum(p)}  seed0.pt\n")  # recorded so: the loader notices
    with pytest.raises(ScunlearnError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert str(p) in msg and "not a readable scunlearn checkpoint" in msg and "delete it" in msg


def _vae(seed: int):
    torch.manual_seed(seed)
    return build_vae(VAEConfig(n_genes=10, hidden=[4], latent=2))


@pytest.mark.parametrize("change", ["truncated", "replaced"])
def test_changed_checkpoint_with_its_old_time_is_refused(tmp_path, change):
    """A checkpoint changed behind Snakemake's back (time stamp kept) is caught by its recorded digest, not
    loaded as if it were the model this run trained."""
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
