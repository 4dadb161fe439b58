# baseline VAE per seed, retrained VAE per forget set and seed (train.seeds and audit.reference_seeds),
# matched negatives (in the preprocessed PCA: no model chooses them)


TRAIN_PARAMS = {k: v for k, v in config["train"].items() if k != "seeds"}


rule baseline:
    input:
        adata=rules.preprocess.output.adata,
        split=rules.split.output.split,
        code=lib("model.py", "train.py", "splits.py", "cellstats.py"),
    output:
        model=f"{OUT}/models/baseline/seed{{seed}}.pt",
        history=f"{OUT}/models/baseline/seed{{seed}}.history.tsv",
        cells=f"{OUT}/models/baseline/seed{{seed}}.cells.npz",
    params:
        kind="baseline",
        seed=lambda w: int(w.seed),
        model=config["model"],
        train=TRAIN_PARAMS,
        device=config["device"],
    log:
        f"{OUT}/logs/baseline/seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/baseline/seed{{seed}}.tsv"
    conda:
        ENV_TORCH
    threads: res("train", "threads", 2)
    resources:
        mem_mb=res("train", "mem_mb", 16000),
        runtime=res("train", "runtime", 120),
        gpu=MODEL_GPUS,
    script:
        "../scripts/train.py"


use rule baseline as retrain with:
    input:
        adata=rules.preprocess.output.adata,
        split=rules.split.output.split,
        forget=rules.forget_set.output.forget,
        code=lib("model.py", "train.py", "splits.py", "cellstats.py"),
    output:
        model=f"{OUT}/models/retrain/{{forget}}/seed{{seed}}.pt",
        history=f"{OUT}/models/retrain/{{forget}}/seed{{seed}}.history.tsv",
        cells=f"{OUT}/models/retrain/{{forget}}/seed{{seed}}.cells.npz",
    params:
        kind="retrain",
        seed=lambda w: int(w.seed),
        model=config["model"],
        train=TRAIN_PARAMS,
        device=config["device"],
    log:
        f"{OUT}/logs/retrain/{{forget}}/seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/retrain/{{forget}}/seed{{seed}}.tsv"


rule matched_negatives:
    input:
        adata=rules.preprocess.output.adata,
        split=rules.split.output.split,
        forget=rules.forget_set.output.forget,
        code=lib("matched.py", "splits.py"),
    output:
        matched=f"{OUT}/splits/matched_{{forget}}.json",
    params:
        k=config["matched"]["k"],
        min_matched=config["matched"]["min_matched"],
        seed=config["seed"],
        # the MLP attack's fold groups (two per fold), clustered here once per forget set
        fold_groups=mlp_fold_groups(ATTACKS),
    log:
        f"{OUT}/logs/matched/{{forget}}.log",
    benchmark:
        f"{OUT}/benchmarks/matched/{{forget}}.tsv"
    conda:
        ENV_TORCH
    threads: 1
    resources:
        runtime=30,
    script:
        "../scripts/matched.py"
