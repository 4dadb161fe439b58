# baseline and retrain with train.ensemble off: one job per seed (see train.smk)


rule baseline:
    input:
        adata=rules.preprocess.output.adata,
        split=rules.split.output.split,
        code=code("train:stage_train"),
    output:
        **sealed(
            model=f"{OUT}/models/baseline/seed{{seed}}.pt",
            history=f"{OUT}/models/baseline/seed{{seed}}.history.tsv",
            cells=f"{OUT}/models/baseline/seed{{seed}}.cells.npz",
        ),
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
        code=code("train:stage_train"),
    output:
        **sealed(
            model=f"{OUT}/models/retrain/{{forget}}/seed{{seed}}.pt",
            history=f"{OUT}/models/retrain/{{forget}}/seed{{seed}}.history.tsv",
            cells=f"{OUT}/models/retrain/{{forget}}/seed{{seed}}.cells.npz",
        ),
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
