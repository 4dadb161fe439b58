"""The paper's MLP attack, unbiased: see :func:`scunlearn.audit.attack.mia`."""

from __future__ import annotations

from scunlearn.audit.attack import mia
from scunlearn.audit.data import AuditData
from scunlearn.membership.attackers import logged_progress


def run(data: AuditData, params: dict) -> dict:
    """The attack on one model, its attackers' training progress in the audit's log (minutes on big data)."""
    cfg = {**params, "bootstrap": data.bootstrap}
    with logged_progress(f"MLP attack ({params['folds']} folds × {params['repeats']} repeats)"):
        return mia(data.features, data.labels, cfg, data.seed, groups=data.groups, device=data.device)
