# PEKA: the token cache of tail mode (once per encoder and shard), then one job per
# (task, PEKA feature set, head) that trains the adapters per fold on the caches and fits the head.
# Adapter hyperparameters are params of `peka` only: changing them never reruns embed or tokens.
# Helpers: workflow/rules/peka_common.smk.
rule tokens:
    input:
        tiles=shard_tiles,
        weights=weights_input,
    output:
        store=directory("results/tokens/{encoder}/{shard}.zarr"),
        manifest="results/tokens/{encoder}/{shard}.manifest.json",
    params:
        key=tokens_key,
        weights=weights_flag,
        blocks=config["peka"]["tail_blocks"],
        dtype=config["peka"]["tokens_dtype"],
        batch_size=config["embed"]["batch_size"],
        device=config["embed"]["device"],
    threads: config["embed"]["threads"]
    resources:
        gpu=config["embed"]["gpu"],
        slurm_extra=refused_retry_after_user_error,
    benchmark:
        "logs/benchmark/tokens/{encoder}/{shard}.tsv"
    log:
        "logs/tokens/{encoder}/{shard}.log",
    conda:
        "../../envs/histofuse.yaml"
    shell:
        "OMP_NUM_THREADS={threads} histofuse tokens --encoder {wildcards.encoder:q}"
        " --tiles {input.tiles:q} --out {output.store:q} --blocks {params.blocks} {params.weights}"
        " --dtype {params.dtype}"
        """ --embed '{{"batch_size": {params.batch_size}, "device": "{params.device}","""
        """ "num_workers": {config[embed][num_workers]}}}' > {log:q} 2>&1"""


rule peka:
    input:
        sheet=config["samples"],
        manifests=lambda w: PEKA.manifests(w.task, w.pfeatures),
        stores=lambda w: PEKA.stores(w.task, w.pfeatures) + PEKA.token_stores(w.task, w.pfeatures),
    output:
        metrics=paths.metrics("{task}", "{pfeatures}", "{head}"),
        predictions=paths.predictions("{task}", "{pfeatures}", "{head}"),
    # `pfeatures`: PEKA's names (`mode:encoder`) fall outside the global `features` constraint
    wildcard_constraints:
        pfeatures=PEKA_PATTERN,
    params:
        stores=lambda w: PEKA.stores(w.task, w.pfeatures),
        token_stores=lambda w: PEKA.token_stores(w.task, w.pfeatures),
        task=lambda w: PLAN.task_json(w.task),
        head=lambda w: PLAN.head_json(w.head),
        peka=PLAN.section_json("peka"),
        cache_keys=lambda w: PLAN.cache_keys(w.task, w.pfeatures),
    resources:
        slurm_extra=refused_retry_after_user_error,
    benchmark:
        "logs/benchmark/peka/{task}/{pfeatures}/{head}.tsv"
    log:
        "logs/peka/{task}/{pfeatures}/{head}.log",
    conda:
        "../../envs/histofuse.yaml"
    shell:
        "OMP_NUM_THREADS=1 histofuse peka --task {wildcards.task} --task-json {params.task:q}"
        " --samples {input.sheet:q} --features {wildcards.pfeatures:q}"
        " --stores {params.stores:q} --token-stores {params.token_stores:q}"
        " --head {wildcards.head} --head-params {params.head:q} --peka {params.peka:q}"
        " --cache-keys {params.cache_keys:q}"
        " --metrics {output.metrics:q} --predictions {output.predictions:q} > {log:q} 2>&1"

