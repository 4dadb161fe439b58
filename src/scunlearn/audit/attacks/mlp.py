"""The paper's MLP attack, unbiased: see :func:`scunlearn.audit.attack.mia`."""

from __future__ import annotations

from scunlearn.audit.attack import mia
from scunlearn.audit.data import AuditData


def run(data: AuditData, params: dict) -> dict:
    cfg = {**params, "bootstrap": data.bootstrap}
    return mia(data.features, data.labels, cfg, data.seed, groups=data.groups, device=data.device)
