"""Stage of the report rule: the HTML report, its tables and figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from scunlearn.stages import package_versions


def stage_report(inp, out, params, threads):
    import anndata as ad

    from scunlearn.io import verify_digest
    from scunlearn.report import build_report

    provenance = package_versions()
    verify_digest(inp["adata"])
    adata = ad.read_h5ad(inp["adata"], backed="r")
    provenance["data_sha256 (raw count matrix)"] = str(adata.uns.get("data_sha256", ""))
    cell_type_scores = adata.uns.get("cell_type_scores")  # in memory: backed mode reads uns whole
    adata.file.close()
    trajs = [dict(t, path=str(p)) for t, p in zip(params["trajectories"], inp["trajectories"])]
    controls = pd.read_csv(inp["controls"], sep="\t") if inp.get("controls") else None
    verdicts = pd.read_csv(inp["verdicts"], sep="\t") if inp.get("verdicts") else None
    frontier = pd.read_csv(inp["frontier"], sep="\t") if inp.get("frontier") else None
    cheapest = pd.read_csv(inp["cheapest"], sep="\t") if inp.get("cheapest") else None
    build_report(inp["summary"], trajs, Path(out["html"]).parent, params["config"], provenance, controls=controls,
                 cell_type_scores=cell_type_scores, verdicts=verdicts, frontier=frontier, cheapest=cheapest)
