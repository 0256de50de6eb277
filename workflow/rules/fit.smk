# One job per (task, feature set, head), reading features from the cache only. The task and head
# settings are params: changing one reruns only the jobs that use it.
rule fit:
    input:
        sheet=config["samples"],
        manifests=feature_manifests,
        hest_bench=task_bench_files,
    output:
        metrics="results/metrics/{task}/{features}/{head}.parquet",
        predictions="results/predictions/{task}/{features}/{head}.parquet",
    wildcard_constraints:
        features=FIT_FEATURES,
    params:
        stores=feature_stores,
        task=task_json,
        head=head_params,
        memory=fit_memory_flag,
    benchmark:
        "logs/benchmark/fit/{task}/{features}/{head}.tsv"
    log:
        "logs/fit/{task}/{features}/{head}.log",
    conda:
        "../../envs/histofuse.yaml"
    shell:
        "histofuse fit --task {wildcards.task} --task-json {params.task:q}"
        " --samples {input.sheet:q} --stores {params.stores:q} --features {wildcards.features:q}"
        " --head {wildcards.head} --head-params {params.head:q}"
        " --metrics {output.metrics:q} --predictions {output.predictions:q} {params.memory}"
        " > {log:q} 2>&1"
