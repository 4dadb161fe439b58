"""Checkpoints: state dict, model config and kind, metadata; loaded with ``weights_only=True``,
their recorded digest checked first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from scunlearn import ScunlearnError
from scunlearn.io import verify_digest, write_with_digest
from scunlearn.vae.model import VAE, VAEConfig, build_vae
from scunlearn.vae.shards import ShardEnsemble

if TYPE_CHECKING:  # anndata is imported only where a stage reads or writes an AnnData
    from anndata import AnnData


#: ``model_kind`` of a checkpoint's payload -> how its model is rebuilt (absent = a plain VAE: older checkpoints)
MODEL_KINDS = ("vae", "shard_ensemble")


def save_checkpoint(model: VAE | ShardEnsemble, path: str | Path, meta: dict) -> None:
    """Atomically save state dict + model config + model kind + metadata (plain types only), recording the
    file's SHA-256 beside it (``<path>.sha256``), which :func:`load_checkpoint` verifies.

    ``model_kind`` is ``"vae"`` or ``"shard_ensemble"`` (:class:`~scunlearn.vae.shards.ShardEnsemble`);
    :func:`load_checkpoint` rebuilds the model from it.
    """
    kind = "shard_ensemble" if isinstance(model, ShardEnsemble) else "vae"
    payload = {"model_kind": kind, "state_dict": model.state_dict(), "model_config": model.cfg.to_dict(),
               "meta": meta}
    write_with_digest(path, lambda tmp: torch.save(payload, tmp))


def _build(payload: dict, path) -> VAE | ShardEnsemble:
    kind = payload.get("model_kind", "vae")
    cfg = payload["model_config"]
    if kind == "vae":
        return build_vae(VAEConfig(**cfg))
    if kind == "shard_ensemble":
        shard = VAEConfig(**cfg["shard"])
        return ShardEnsemble([build_vae(shard) for _ in range(int(cfg["n_shards"]))])
    raise ScunlearnError(f"{path}: unknown model_kind '{kind}' (known: {', '.join(MODEL_KINDS)}); "
                         "it was written by another version of scunlearn: delete it and rerun snakemake")


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[VAE | ShardEnsemble, dict]:
    """Load a checkpoint saved by :func:`save_checkpoint` (``weights_only=True``), its recorded digest verified
    first (a changed file is refused, never used): a VAE or a shard ensemble."""
    try:
        verify_digest(path)
        payload = torch.load(path, map_location=device, weights_only=True)
    except ScunlearnError:
        raise
    except FileNotFoundError as e:
        raise ScunlearnError(f"{path}: checkpoint not found") from e
    except Exception as e:  # noqa: BLE001
        raise ScunlearnError(f"{path}: not a readable scunlearn checkpoint ({e}); it may be truncated or "
                             "corrupt: delete it and rerun snakemake, which rebuilds it") from e
    model = _build(payload, path).to(device)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload.get("meta", {})


def check_genes(model: VAE, adata: AnnData, path: str | Path, meta: dict | None = None) -> None:
    """Fail clearly when a checkpoint was trained on another gene set."""
    if model.cfg.n_genes != adata.n_vars:
        raise ScunlearnError(f"{path}: model has {model.cfg.n_genes} genes, data has {adata.n_vars}")
    genes = (meta or {}).get("genes")
    if genes and list(genes) != list(map(str, adata.var_names)):
        raise ScunlearnError(f"{path}: model was trained on another gene set than the data's HVGs; rerun training")
