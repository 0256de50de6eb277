# One job per (task, feature set, head), reading features from the cache only. The task and head
# settings are params: changing one reruns only the jobs that use it.
rule fit:
    input:
        sheet=config["samples"],
        manifests=lambda w: PLAN.feature_manifests(w.task, w.features),
        # the stores too: one deleted by hand (its manifest kept) is rebuilt, not read as gone
        stores=lambda w: PLAN.feature_stores(w.task, w.features),
        hest_bench=lambda w: PLAN.bench_files(w.task),
    output:
        metrics=paths.METRICS,
        predictions=paths.PREDICTIONS,
    wildcard_constraints:
        features=PLAN.fit_features_pattern,
    params:
        stores=lambda w: PLAN.feature_stores(w.task, w.features),
        task=lambda w: PLAN.task_json(w.task),
        head=lambda w: PLAN.head_json(w.head),
        memory=PLAN.memory_flag,
        cache_keys=lambda w: PLAN.cache_keys(w.task, w.features),
    resources:
        slurm_extra=refused_retry_after_user_error,
    benchmark:
        "logs/benchmark/fit/{task}/{features}/{head}.tsv"
    log:
        "logs/fit/{task}/{features}/{head}.log",
    conda:
        "../../envs/histofuse.yaml"
    shell:
        "histofuse fit --task {wildcards.task} --task-json {params.task:q}"
        " --samples {input.sheet:q} --stores {params.stores:q} --features {wildcards.features:q}"
        " --head {wildcards.head} --head-params {params.head:q} --cache-keys {params.cache_keys:q}"
        " --metrics {output.metrics:q} --predictions {output.predictions:q} {params.memory}"
        " > {log:q} 2>&1"
