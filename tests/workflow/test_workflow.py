"""The workflow itself: config validation at parse time, and one end-to-end run of a tiny study."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]


def _smk(args, cwd, timeout=1800):
    return subprocess.run(SNAKEMAKE + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _config(tmp_path, **changes):
    cfg = yaml.safe_load((ROOT / "tests/data/tiny.yaml").read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        d = cfg
        for p in parents:
            d = d[p]
        d[last] = value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("change, message", [
    ({"train.lr": "fast"}, "lr"),
    ({"model.latnet": 8}, "latnet"),
    ({"dataset.source": "csv"}, "source"),
    ({"methods.fisher.method": "nope"}, "unknown unlearning method 'nope'"),
    ({"methods.fisher.params": {"alpah": 1}}, "unknown parameter 'alpah'"),
    ({"methods.fisher.params": {"steps": -3}}, "methods.fisher.params.steps: -3 is less than the minimum"),
    ({"methods.fisher.params": {"steps": "three"}}, "methods.fisher.params.steps: 'three' is not of type 'integer'"),
    ({"methods.frozen_single.params": {"critic": 5}}, "methods.frozen_single.params.critic: expected a mapping"),
    ({"methods.extragradient_l10.params": {"early_stop": {"smoothing": 0}}},
     "methods.extragradient_l10.params.early_stop.smoothing: 0 is less than the minimum of 1"),
    ({"methods.retain_finetune.params": {"lr": "fast"}},
     "methods.retain_finetune.params.lr: 'fast' is not of type 'number'"),
])
def test_bad_config_fails_at_parse_time_naming_the_key(tmp_path, change, message):
    cfg = _config(tmp_path, **change)
    r = _smk(["-n", "--configfile", str(cfg), "--directory", str(tmp_path)], tmp_path, timeout=120)
    assert r.returncode != 0
    assert message in r.stdout + r.stderr


@pytest.mark.workflow
def test_tiny_study_end_to_end(tmp_path):
    cfg = ROOT / "tests/data/tiny.yaml"
    r = _smk(["--cores", "2", "--configfile", str(cfg), "--directory", str(tmp_path)], tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    out = tmp_path / "results/tiny"

    summary = pd.read_csv(out / "report/summary.tsv", sep="\t")
    from scunlearn.audit.summary import SUMMARY_COLUMNS, VERDICTS

    assert list(summary.columns) == SUMMARY_COLUMNS
    # baseline + retrain on both sets, frozen + extragradient on both, the others only on scattered
    expected = {("structured", v) for v in ("baseline", "retrain", "frozen_single", "extragradient_l10")}
    expected |= {("scattered", v) for v in ("baseline", "retrain", "frozen_single", "extragradient_l10", "fisher",
                                            "retain_finetune", "finetune_ladder@b0.34", "finetune_ladder@b0.67",
                                            "sisa", "salun", "simnpo", "selective_amnesia")}
    assert set(zip(summary["forget_set"], summary["variant"])) == expected
    assert summary["auc"].between(0, 1).all() and summary["pc_auc"].between(0, 1).all()
    assert (summary["auc_ci_low"] <= summary["auc_ci_high"]).all()
    assert (summary["pc_auc_ci_low"] <= summary["pc_auc"]).all()
    assert (summary["pc_auc"] <= summary["pc_auc_ci_high"]).all()
    assert set(summary.loc[summary["method"] == "retrain", "verdict"]) == {"TARGET"}
    assert set(summary["verdict"]) <= set(VERDICTS)
    assert "OVER-UNLEARN" not in set(summary.loc[summary["method"] == "baseline", "verdict"])
    # reference seeds 1 and 2 are references only: 3 retrained models, each audited one has 2 references
    assert set(summary.loc[summary["method"] == "retrain", "n_references"]) == {2}
    assert set(summary.loc[summary["method"] == "baseline", "n_references"]) == {3}
    # an unlearned model is never compared with its own seed's retrained model: 2 references
    assert set(summary.loc[~summary["method"].isin(["retrain", "baseline"]), "n_references"]) == {2}
    assert set(summary["seed"]) == {0}
    for _, g in summary.groupby("forget_set"):
        floor = g.loc[g["method"] == "retrain", "auc"].mean()
        assert g["floor"].iloc[0] == pytest.approx(floor)
        assert g["band_high"].iloc[0] == pytest.approx(floor + 0.03)
    assert summary["wall_s"].notna().all() and (summary["wall_s"] > 0).all()
    assert (summary.loc[summary["method"] == "retrain", "cost_vs_retrain"] == 1.0).all()
    # train.ensemble: a retrained seed's wall time is its ensemble job's over the job's 3 seeds (0, 1, 2)
    job = pd.read_csv(out / "benchmarks/retrain/scattered/ensemble.tsv", sep="\t")["s"].iloc[0]
    sel = (summary["method"] == "retrain") & (summary["forget_set"] == "scattered")
    assert summary.loc[sel, "wall_s"].iloc[0] == pytest.approx(job / 3)
    # sisa: the shard ensemble was audited, and its up-front cost is reported apart from the request's
    sisa = summary[summary["method"] == "sisa"]
    assert len(sisa) == 1 and (sisa["setup_cost_vs_retrain"] > 0).all() and (sisa["cost_vs_retrain"] > 0).all()
    assert summary.loc[summary["method"] != "sisa", "setup_cost_vs_retrain"].isna().all()
    rec = json.loads((out / "audit/scattered/sisa/seed0.json").read_text())
    assert rec["sisa_shards"] == 2 and rec["sisa_shards_retrained"] == 2  # 20 random cells hit both shards

    # the structured forget set is exactly the rare cluster within train
    import anndata as ad

    adata = ad.read_h5ad(out / "data/adata.h5ad")
    split = json.loads((out / "splits/split.json").read_text())
    forget = json.loads((out / "splits/structured.json").read_text())["forget"]
    mk = set(adata.obs_names[adata.obs["cell_type"] == "Megakaryocyte"])
    assert set(forget) == mk & set(split["train"]) and len(forget) > 10
    matched = json.loads((out / "splits/matched_structured.json").read_text())
    assert set(matched["barcodes"]) <= set(split["audit"]) and matched["size"] >= 40
    assert matched["representation"] == "X_pca"  # chosen without any model

    # an audit record uses the forget cells and the matched negatives
    rec = json.loads((out / "audit/structured/baseline/seed0.json").read_text())
    assert rec["n_forget"] == len(forget) and rec["n_negatives"] == matched["size"]
    assert rec["n_audit"] == len(split["audit"]) and rec["n_in_references"] == 2  # baselines 1, 2 (not itself)

    # the judge's controls are counted over every seed (train seed 0 and reference seeds 1, 2), each
    # model audited leave-one-out, and controls_ok in the summary is decided on those counts
    for fs, g in summary.groupby("forget_set"):
        ctl = json.loads((out / f"audit/{fs}/controls.json").read_text())
        kinds = sorted((t["kind"], t["model"]) for t in ctl["trials"])
        assert kinds == [("baseline", f"baseline/seed{s}") for s in (0, 1, 2)] + [
            ("retrain", f"retrain/seed{s}") for s in (0, 1, 2)]
        assert (ctl["n_baseline"], ctl["n_retrain"]) == (3, 3)
        assert ctl["baseline_caught"] == sum(t["outcome"] == "ABOVE" for t in ctl["trials"] if t["kind"] == "baseline")
        ok = ctl["baseline_caught"] == 3 and ctl["retrain_false_alarms"] == 0
        assert ctl["controls_ok"] == ok and set(g["controls_ok"]) == {ok}
        assert set(g["controls_n_baseline"]) == {3} and set(g["controls_n_retrain"]) == {3}
        assert set(g["controls_baseline_caught"]) == {ctl["baseline_caught"]}
        # the audited retrained seed's record carries the same leave-one-out result as the controls
        own = g[g["method"] == "retrain"].iloc[0]
        trial = next(t for t in ctl["trials"] if t["model"] == "retrain/seed0")
        assert own["pc_auc"] == pytest.approx(trial["pc_auc"]) and own["p_vs_retrain"] == pytest.approx(trial["p"])
    assert set(pd.read_csv(out / "report/controls.tsv", sep="\t")["forget_set"]) == set(summary["forget_set"])

    # one verdict per variant and forget set (the per-model rows' values, two-sample against the null),
    # every file a stage reads has its digest record, and the report opens with the verdicts
    from scunlearn.audit.variants import RETRAIN_AS_METHOD, VERDICT_COLUMNS, record_value

    verdicts = pd.read_csv(out / "report/verdicts.tsv", sep="\t")
    assert list(verdicts.columns) == VERDICT_COLUMNS
    methods = summary[~summary["method"].isin(["baseline", "retrain"])]
    assert set(zip(verdicts["forget_set"], verdicts["variant"])) == (
        set(zip(methods["forget_set"], methods["variant"])) | {(f, RETRAIN_AS_METHOD) for f in ("structured",
                                                                                                 "scattered")})
    # tiny: one train seed and two reference seeds; the control has 1 model against 2 other retrained ones
    assert set(verdicts.loc[verdicts["variant"] != RETRAIN_AS_METHOD, "n_models"]) == {1}
    rec = json.loads((out / "audit/scattered/fisher/seed0.json").read_text())
    null = json.loads((out / "audit/scattered/baseline/seed0.json").read_text())["pc_null"]  # all 3 retrained
    row = verdicts.set_index(["forget_set", "variant"]).loc[("scattered", "fisher")]
    assert len(null) == 3 and len(rec["pc_null"]) == 2
    assert row["delta"] == pytest.approx(record_value(rec) - np.mean(null))
    assert row["verdict"] in {"SUCCESS", "FAIL", "OVER-UNLEARN", "INCONCLUSIVE"} and row["n_null"] == 3
    assert verdicts.loc[verdicts["method"] == "sisa", "verdict"].eq("NOT-COMPARABLE").all()
    for f in ("splits/split.json", "splits/scattered.json", "models/baseline/seed0.cells.npz",
              "models/fisher/scattered/seed0.pt", "audit/scattered/fisher/seed0.json"):
        assert (out / (f + ".sha256")).read_text().split()[1] == Path(f).name
    page = (out / "report/index.html").read_text()
    assert page.index('id="verdicts"') < page.index('id="power"') and "Resolution of this study" in page

    # every stage ran only library code its rule declares as code inputs (derived from the imports by
    # scunlearn.codedeps; stages.run compares them with the modules the process really imported)
    logs = sorted((out / "logs").rglob("*.log"))
    assert len(logs) >= 30
    for lg in logs:
        text = lg.read_text()
        assert "are not among the rule's code inputs" not in text, text[-2000:]
        assert "code inputs: every library file the stage ran is among the rule's" in text, lg

    # logs show progress; trajectories exist
    assert "seed 0 epoch   2" in (out / "logs/baseline/ensemble.log").read_text()  # train.ensemble: one job
    traj = pd.read_csv(out / "models/extragradient_l10/structured/seed0.tsv", sep="\t")
    assert {"epoch", "shadow_auc", "forget_loss", "val_loss", "grad_share_attacker"} <= set(traj.columns)
    assert traj["phase"].iloc[0] == "baseline" and traj["epoch"].iloc[0] == 0 and len(traj) >= 3
    ft = pd.read_csv(out / "models/retain_finetune/scattered/seed0.tsv", sep="\t")
    assert list(ft["phase"]) == ["baseline", "finetune", "final"] and ft["forget_loss"].notna().all()

    html = (out / "report/index.html").read_text()
    assert html.count("data:image/png;base64,") == 7 and "Table II" in html

    # the frontier: the fine-tuning ladder's two budgets are one line, each rung a variant with both costs;
    # Figure 7 plots exactly frontier.tsv; the report answers "what does it cost to forget?"
    from scunlearn.audit.frontier import CHEAPEST_COLUMNS, FRONTIER_COLUMNS

    front = pd.read_csv(out / "report/frontier.tsv", sep="\t")
    assert list(front.columns) == FRONTIER_COLUMNS
    assert set(zip(front["forget_set"], front["variant"])) == set(zip(methods["forget_set"], methods["variant"]))
    lad = front[front["line"] == "finetune_ladder"].set_index("variant")
    assert sorted(lad.index) == ["finetune_ladder@b0.34", "finetune_ladder@b0.67"]
    assert lad.loc["finetune_ladder@b0.34", "budget"] == 0.34 and lad["is_control"].all()
    # compute: 1 and 2 epochs over the retain cells, against the retrain's epochs x training cells
    ratio = lad.loc["finetune_ladder@b0.67", "compute_vs_retrain"] / lad.loc["finetune_ladder@b0.34",
                                                                              "compute_vs_retrain"]
    assert ratio == pytest.approx(2.0) and (front["cost_vs_retrain"] > 0).all()
    ret = json.loads((out / "audit/scattered/retrain/seed0.json").read_text())
    ft_rec = json.loads((out / "audit/scattered/finetune_ladder@b0.34/seed0.json").read_text())
    n_retain = len(split["train"]) - 20
    assert ft_rec["cell_passes"] in (n_retain, n_retain - 1)  # one epoch (a 1-cell last batch is skipped)
    assert ret["cell_passes"] % n_retain == 0 and ret["cell_passes"] >= n_retain
    fig = pd.read_csv(out / "report/figures/fig7_frontier.tsv", sep="\t")
    pd.testing.assert_frame_equal(fig[["variant", "cost_vs_retrain", "delta_of_gap"]],
                                  front[["variant", "cost_vs_retrain", "delta_of_gap"]], check_exact=False)
    best = pd.read_csv(out / "report/frontier_cheapest.tsv", sep="\t")
    assert list(best.columns) == CHEAPEST_COLUMNS and set(best["forget_set"]) == {"structured", "scattered"}
    assert 'id="frontier"' in html and "What does it cost to forget?" in html
    assert "Audit power on this study" in html and 'id="method_comparison"' in html
    assert "Controls on structured: every seed" in html and "retrain/seed2" in html

    # nothing left to do: a second run is a no-op; a changed method parameter reruns only its jobs
    r = _smk(["-n", "--configfile", str(cfg), "--directory", str(tmp_path)], tmp_path, timeout=120)
    assert "Nothing to be done" in r.stdout + r.stderr
    changed = _config(tmp_path, **{"methods.fisher.params": {"steps": 4, "fisher_cells": 100, "finetune_epochs": 1}})
    args = ["-n", "--quiet", "rules", "--configfile", str(changed), "--directory", str(tmp_path)]
    r = _smk(args, tmp_path, timeout=120)
    text = r.stdout + r.stderr
    assert "unlearn" in text and "baseline" not in text and "retrain" not in text and "preprocess" not in text
    assert "controls" not in text  # the controls read only baseline and retrained models
    # train.ensemble: one job made every seed's files; deleting one seed's (a reference seed's) reruns it
    (out / "models/retrain/scattered/seed2.cells.npz").unlink()
    r = _smk(["-n", "--quiet", "rules", "--configfile", str(cfg), "--directory", str(tmp_path)], tmp_path, timeout=120)
    text = r.stdout + r.stderr
    assert "retrain" in text and "baseline" not in text and "preprocess" not in text, text[-2000:]
    assert "retrain/scattered/ensemble.log" in _smk(["-n", "--configfile", str(cfg), "--directory", str(tmp_path)],
                                                    tmp_path, timeout=120).stdout

    # progress a user can read: epoch i/max with an ETA, the MLP attack's progress, a line per audited model
    train_log = (out / "logs/baseline/ensemble.log").read_text()
    assert "seed 0 epoch   1/3 (max; early stopping may end sooner)" in train_log and "elapsed, ETA" in train_log
    assert "extragradient_l10  epoch   1/2 (max; early stopping may end sooner)  phase train" in (
        out / "logs/unlearn/extragradient_l10/structured.log").read_text()
    audit_log = (out / "logs/audit/structured/frozen_single.log").read_text()
    assert "MLP attack (3 folds × 1 repeats): epoch  20/20 of 3 fold attackers" in audit_log
    target = "results/tiny/audit/structured/frozen_single/seed0.json"
    r = _smk(["--cores", "1", "--configfile", str(cfg), "--directory", str(tmp_path), "--force", target], tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "scunlearn: audited frozen_single/structured/seed0: pc_auc 0." in r.stdout + r.stderr  # the terminal


def test_config_readme_documents_every_schema_key_with_its_default():
    """config/README.md lists every key of config/schema.yaml, and the default it quotes is the schema's."""
    import re

    schema = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    readme = (ROOT / "config/README.md").read_text()
    # table rows: first cell's `keys`, second cell (when it is a `single value`) the quoted default
    rows = [r.split("|") for r in readme.splitlines() if r.startswith("| `")]
    documented = {k: r[2].strip() for r in rows for k in re.findall(r"`([^`]+)`", r[1])}
    documented |= {k: "" for k in re.findall(r"^## `([^`]+)`", readme, re.M)}  # sections (maps of names)

    def leaves(node, path):
        for k, v in node.get("properties", {}).items():
            if v.get("type") == "object" and "properties" in v:
                yield from leaves(v, path + [k])
            else:
                yield path + [k], v

    undocumented, wrong = [], []
    for path, spec in leaves(schema, []):
        names = [".".join(path[i:]) for i in range(len(path))]  # full path down to the bare key
        hit = next((n for n in names if n in documented), None)
        if hit is None:
            undocumented.append(".".join(path))
            continue
        if "default" in spec and not isinstance(spec["default"], (dict, list)):
            quoted = re.fullmatch(r"`([^`]*)`", documented[hit])
            if quoted and yaml.safe_load(quoted.group(1)) != spec["default"]:
                wrong.append((".".join(path), quoted.group(1), spec["default"]))
    assert not undocumented, f"keys missing from config/README.md: {undocumented}"
    assert not wrong, f"config/README.md quotes other defaults than the schema: {wrong}"


def test_stage_scripts_import_this_checkouts_library_first(tmp_path):
    """An installed scunlearn elsewhere (another checkout, an old release) never answers for the workflow's code."""
    decoy = tmp_path / "decoy" / "scunlearn"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the decoy was imported')\n")
    code = ("import sys; sys.path.append(sys.argv[1]); sys.path.insert(0, sys.argv[2]); "
            "sys.path.insert(0, sys.argv[3]); import _stage, scunlearn; print(scunlearn.__file__)")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "src"), str(tmp_path / "decoy"),
                        str(ROOT / "workflow/scripts")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(ROOT / "src/scunlearn/__init__.py")


def test_a_config_of_nested_yaml_aliases_is_refused_in_seconds(tmp_path):
    """350 bytes of aliases nested nine deep ("billion laughs") expand to 9^9 values: refused before the
    schema validation walks them (which used to run on, its memory growing, with no message)."""
    import time

    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines + ["run: *i"]) + "\n")
    t0 = time.monotonic()
    r = _smk(["-n", "--configfile", str(bomb), "--directory", str(tmp_path)], tmp_path, timeout=60)
    assert r.returncode != 0 and time.monotonic() - t0 < 30
    text = r.stdout + r.stderr
    assert f"in config {bomb}: more than 100,000 values once its YAML aliases" in text
    assert len(text.strip().splitlines()) < 20, text[-3000:]


def test_config_size_check_counts_aliases_and_passes_the_studies():
    import yaml

    from scunlearn import ScunlearnError
    from scunlearn.params import check_config_size

    for name in ("config/config.yaml", "config/demo.yaml", "tests/data/tiny.yaml"):
        check_config_size(yaml.safe_load((ROOT / name).read_text()), [name])
    shared = list(range(10))
    check_config_size({"a": [shared] * 9}, ["x"], limit=101)  # 1 + 1 + 9 * (1 + 10) = 101 values
    with pytest.raises(ScunlearnError, match="more than 100 values"):
        check_config_size({"a": [shared] * 9}, ["x"], limit=100)


def test_a_schema_error_is_told_in_bounded_lines_with_a_bounded_value(tmp_path):
    """A 20,000-item value under an unknown key: the message names the file and key and shows a few items,
    never jsonschema's own message (which prints the instance and schema whole)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    cfg["forget_sets"]["structured"]["extra"] = list(range(20_000))
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = _smk(["-n", "--configfile", str(path), "--directory", str(tmp_path)], tmp_path, timeout=120)
    text = r.stdout + r.stderr
    assert r.returncode != 0 and f"in config {path}" in text and "forget_sets.structured.extra" in text
    assert "unknown key 'extra'" in text and "19999" not in text
    assert len(text.strip().splitlines()) < 20 and len(text) < 3000, text[-3000:]


def test_a_config_that_is_not_yaml_is_told_with_its_file_and_line(tmp_path):
    """Snakemake reads --configfile before the Snakefile runs and says only 'Config file is not valid JSON or
    YAML'; `python -m scunlearn.configfile FILE` (named in the README's troubleshooting) says where."""
    from scunlearn import ScunlearnError
    from scunlearn.configfile import read_config_file

    bad = tmp_path / "mine.yaml"
    bad.write_text("run: mine\nforget_sets:\n  a: {kind: random, n: 5\n  b: 3\n")
    with pytest.raises(ScunlearnError) as e:
        read_config_file(bad)
    first = str(e.value).splitlines()[0]
    assert first.startswith(f"{bad}:4:4: not valid YAML") and "b: 3" in str(e.value)
    r = subprocess.run([sys.executable, "-m", "scunlearn.configfile", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and f"{bad}:4:4: not valid YAML" in r.stdout
    r = subprocess.run([sys.executable, "-m", "scunlearn.configfile", str(ROOT / "config/demo.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stdout + r.stderr
