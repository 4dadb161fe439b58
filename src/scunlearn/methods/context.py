"""What an unlearning method gets: a model copy, forget/retain/validation cells — never audit cells."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from scunlearn.costs import Progress
from scunlearn.data.splits import Partition
from scunlearn.vae.model import VAE

log = logging.getLogger(__name__)


class Trajectory:
    """Collects one row per epoch/step of a method and echoes it to the log.

    A method announces each loop before it runs (:meth:`expect`); the log lines of that loop's
    rows then count it (``epoch   3/15``) and end with the elapsed time and an ETA. The rows
    themselves (the trajectory TSV) are unchanged.
    """

    def __init__(self, name: str = "trajectory"):
        self.rows: list[dict] = []
        self.name = name
        self._progress: dict[str, tuple[str, Progress]] = {}

    def expect(self, phase: str, total: int, *, key: str = "epoch", unit: str | None = None,
               upper_bound: bool = False) -> None:
        """Time the loop about to log rows of ``phase``: row[key] of ``total`` units done (``unit``, default
        ``key``); ``upper_bound`` when the loop may stop early (said once on its first line, the ETA a bound)."""
        self._progress[phase] = (key, Progress(total, unit or key, upper_bound))

    def log(self, **row) -> None:
        self.rows.append(row)
        key, progress = self._progress.get(row.get("phase"), (None, None))
        fields = [progress.count(v) if k == key else f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                  for k, v in row.items()]
        if progress is not None and key in row:
            fields.append(progress.timing(row[key]))
        log.info("%s  %s", self.name, "  ".join(fields))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


@dataclass(frozen=True, slots=True)
class UnlearnContext:
    """Everything a method may use. Holds copies of the allowed cells only, so audit cells are unreachable."""

    model: VAE
    forget: torch.Tensor
    retain: torch.Tensor
    validation: torch.Tensor
    seed: int
    device: torch.device
    params: dict
    trajectory: Trajectory = field(default_factory=Trajectory)
    #: extra inputs a method declared (e.g. sisa's shard checkpoint), by name; empty for most methods
    inputs: dict = field(default_factory=dict)
    #: facts the method reports about itself (e.g. dp_retrain's ε): written into the checkpoint's meta
    #: and the model's audit record, so a summary column can carry them
    report: dict = field(default_factory=dict)

    @classmethod
    def build(cls, model: VAE, X: torch.Tensor, part: Partition, seed: int, params: dict,
              trajectory: Trajectory | None = None, inputs: dict | None = None) -> "UnlearnContext":
        """Slice forget / retain / validation rows out of X; refuse if any of them is an audit cell."""
        audit = np.asarray(part.audit)
        for name in ("forget", "retain", "validation"):
            overlap = np.intersect1d(getattr(part, name), audit)
            if len(overlap):
                raise ValueError(f"{len(overlap)} {name} cells are audit cells: a method may never see audit cells")
        rows = {n: torch.as_tensor(np.asarray(getattr(part, n)), dtype=torch.long, device=X.device)
                for n in ("forget", "retain", "validation")}
        return cls(model=model, forget=X[rows["forget"]].clone(), retain=X[rows["retain"]].clone(),
                   validation=X[rows["validation"]].clone(), seed=int(seed), device=X.device,
                   params=dict(params), trajectory=trajectory or Trajectory(), inputs=dict(inputs or {}))
