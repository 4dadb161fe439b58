# baseline VAE per seed, retrained VAE per forget set and seed (train.seeds and audit.reference_seeds),
# matched negatives (in the preprocessed PCA: no model chooses them).
# With train.ensemble (the default) one job trains all seeds of the baseline (and one job all
# seeds of each forget set's retrain) as one batched model (scunlearn.vae.batched); each seed still
# gets its own checkpoint, history and per-cell statistics, the files the per-seed jobs write.


# the recipe without the seeds and the way they are batched or launched: none changes a seed's model
# (beyond float rounding)
TRAIN_PARAMS = {k: v for k, v in config["train"].items() if k not in ("seeds", "ensemble", "cuda_graphs")}


if ENSEMBLE:

    rule baseline:
        input:
            adata=rules.preprocess.output.adata,
            split=rules.split.output.split,
            code=code("train:stage_train_ensemble"),
        output:
            **seed_files("baseline"),
        params:
            kind="baseline",
            seeds=ALL_SEEDS,
            model=config["model"],
            train=TRAIN_PARAMS,
            device=config["device"],
            cuda_graphs=config["train"]["cuda_graphs"],
        log:
            f"{OUT}/logs/baseline/ensemble.log",
        benchmark:
            f"{OUT}/benchmarks/baseline/ensemble.tsv"
        conda:
            ENV_TORCH
        threads: res("train", "threads", 2)
        resources:
            mem_mb=res("train", "mem_mb", 16000),
            runtime=res("train", "runtime", 120 * len(ALL_SEEDS)),  # the default: 2 hours per seed
            gpu=MODEL_GPUS,
        script:
            "../scripts/train_ensemble.py"

    use rule baseline as retrain with:
        input:
            adata=rules.preprocess.output.adata,
            split=rules.split.output.split,
            forget=rules.forget_set.output.forget,
            code=code("train:stage_train_ensemble"),
        output:
            **seed_files("retrain/{forget}"),
        params:
            kind="retrain",
            seeds=ALL_SEEDS,
            model=config["model"],
            train=TRAIN_PARAMS,
            device=config["device"],
            cuda_graphs=config["train"]["cuda_graphs"],
        log:
            f"{OUT}/logs/retrain/{{forget}}/ensemble.log",
        benchmark:
            f"{OUT}/benchmarks/retrain/{{forget}}/ensemble.tsv"

else:

    include: "train_solo.smk"


rule matched_negatives:
    input:
        adata=rules.preprocess.output.adata,
        split=rules.split.output.split,
        forget=rules.forget_set.output.forget,
        code=code("train:stage_matched"),
    output:
        **sealed(
            matched=f"{OUT}/splits/matched_{{forget}}.json",
        ),
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
