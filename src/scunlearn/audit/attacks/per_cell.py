"""The per-cell calibrated attack (primary): see :mod:`scunlearn.audit.calibrated`."""

from __future__ import annotations

from scunlearn.audit.calibrated import per_cell_audit
from scunlearn.audit.data import AuditData


def cell_statistic(stats: dict, statistic: str):
    """The per-cell statistic with higher = more member-like (ELBO, or minus the NB NLL)."""
    return stats["elbo"] if statistic == "elbo" else -stats["nll"]


def is_type_level(forget_kind: str | None) -> bool:
    """Whether a forget set of this kind is a whole cell type or cluster (its shift is the audited signal)."""
    # kind obs (a donor, sample, batch, condition) is not: such a group spans cell types, and its cells are a
    # share of each type's audit cells, so centring each type on its unseen cells (mostly other groups') keeps
    # the forgotten group's own shift and removes only the seed's shift of the whole type. To forget a type by
    # the data's own labels, use kind cell_type with preprocess.cell_type_key.
    return forget_kind in ("cell_type", "cluster")


def run(data: AuditData, params: dict) -> dict:
    st = params["statistic"]

    def of(group):
        return {name: cell_statistic(s, st) for name, s in group.items()}

    return per_cell_audit(cell_statistic(data.target_stats, st), of(data.retrain_stats), of(data.baseline_stats),
                          data.forget, data.negatives, self_name=data.self_name, exclude=data.exclude,
                          controls=of(data.control_stats),
                          margin=data.margin, alpha=data.alpha, n0=params["shrinkage"],
                          strata=data.cell_types if params["centre_by_cell_type"] else None,
                          test=params["test"], measure=params["measure"],
                          against=params["negatives"],
                          type_level=is_type_level(data.forget_kind))
