"""The LOSS attack: a cell's ELBO under the model as its membership score (no training)."""

from __future__ import annotations

from scunlearn.audit.data import AuditData
from scunlearn.membership.metrics import auc_score


def run(data: AuditData, params: dict) -> dict:
    return {"loss_attack_auc": auc_score(data.labels, data.features[:, data.feature_names.index("elbo")])}
