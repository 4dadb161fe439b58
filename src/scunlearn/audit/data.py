"""What an attack sees of one audit: the model, the cells, the negative sets and the references' statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


@dataclass
class AuditData:
    """The inputs of every attack in one audit job (built by the audit stage, read by the attacks).

    ``forget``: rows of the forget cells; ``negatives``: named row sets of non-members
    (``matched`` first: the verdicts use it; ``cell_type``; ``all`` audit cells);
    ``groups``: the MLP attack's fold groups for forget + matched rows; ``stats``:
    per-cell statistics of the audited model (``target``) and of the references, read from
    the models' ``.cells.npz`` files on first use.
    """

    model: object
    X: object
    forget: np.ndarray
    negatives: dict[str, np.ndarray]
    groups: np.ndarray
    seed: int
    alpha: float
    margin: float
    bootstrap: int
    target_stats: dict[str, np.ndarray]
    retrain_stats: dict[str, dict[str, np.ndarray]]
    baseline_stats: dict[str, dict[str, np.ndarray]]
    control_stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    self_name: str | None = None
    #: retrained references left out besides ``self_name`` (an unlearned model's own seed's retrained model)
    exclude: tuple = ()
    cell_types: np.ndarray | None = None  # a label per cell (obs['cell_type'])
    forget_kind: str | None = None  # the forget set's kind (cell_type, cluster, random)

    @property
    def device(self):
        """Where the audit's model and counts live (the ``audit.device``): attacks that train run there."""
        return getattr(self.X, "device", None)

    @property
    def matched(self) -> np.ndarray:
        return self.negatives["matched"]

    @cached_property
    def labels(self) -> np.ndarray:
        """1 for the forget cells, 0 for the matched negatives (the MLP and LOSS attacks' rows)."""
        return np.r_[np.ones(len(self.forget)), np.zeros(len(self.matched))].astype(int)

    @cached_property
    def features(self) -> np.ndarray:
        """The MLP attack's per-cell features of forget + matched rows (computed once per job)."""
        from scunlearn.membership.attackers import model_features

        return model_features(self.model, self.X, np.r_[self.forget, self.matched])

    @cached_property
    def feature_names(self) -> list[str]:
        from scunlearn.membership.attackers import feature_names

        return feature_names(self.model.cfg.latent)
