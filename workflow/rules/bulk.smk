# Slide-level bulk tasks (config `bulk`): one job per (task, feature set, aggregation, head),
# reading tile features from the cache (mean pooling or ABMIL) or slide embeddings from files.
# The report's head is `{aggregation}-{head}`, e.g. mean-mlp and abmil-mlp side by side.
rule bulk_fit:
    input:
        sheet=config["samples"],
        table=bulk_table,
        manifests=bulk_manifests,
        embeddings=bulk_embeddings,
    output:
        metrics="results/bulk/metrics/{task}/{features}/{agg}-{head}.parquet",
        predictions="results/bulk/predictions/{task}/{features}/{agg}-{head}.parquet",
    wildcard_constraints:
        agg="mean|abmil|slide",
    params:
        sources=bulk_sources,
        task=bulk_task_params,
        head=bulk_head_params,
    benchmark:
        "logs/benchmark/bulk_fit/{task}/{features}/{agg}-{head}.tsv"
    log:
        "logs/bulk_fit/{task}/{features}/{agg}-{head}.log",
    conda:
        "../../envs/histofuse.yaml"
    shell:
        "histofuse bulk-fit --task {wildcards.task} --task-json {params.task:q}"
        " --samples {input.sheet:q} --table {input.table:q} --features {wildcards.features:q}"
        " --aggregation {wildcards.agg} {params.sources} --head {wildcards.head}"
        " --head-params {params.head:q} --metrics {output.metrics:q}"
        " --predictions {output.predictions:q} > {log:q} 2>&1"
