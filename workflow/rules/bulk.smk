# Slide-level bulk tasks (config `bulk`): one job per (task, feature set, aggregation, head),
# reading tile features from the cache (mean pooling or ABMIL) or slide embeddings from files.
# The report's head is `{aggregation}-{head}`, e.g. mean-mlp and abmil-mlp side by side.
rule bulk_fit:
    input:
        sheet=config["samples"],
        table=lambda w: BULK.table(w.task),
        manifests=lambda w: BULK.manifests(w.task, w.features, w.agg),
        stores=lambda w: [paths.store_of(m) for m in BULK.manifests(w.task, w.features, w.agg)],
        embeddings=lambda w: BULK.embeddings(w.task, w.features, w.agg),
    output:
        metrics=paths.BULK_METRICS,
        predictions=paths.BULK_PREDICTIONS,
    wildcard_constraints:
        agg="mean|abmil|slide",
    params:
        sources=lambda w, input: sources_flag(w.agg, input.embeddings, input.manifests),
        task=lambda w: BULK.task_json(w.task),
        head=lambda w: BULK.head_json(w.task, w.agg, w.head),
        cache_keys=lambda w: PLAN.cache_keys(w.task, w.features),
    resources:
        slurm_extra=refused_retry_after_user_error,
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
        " --head-params {params.head:q} --cache-keys {params.cache_keys:q}"
        " --metrics {output.metrics:q}"
        " --predictions {output.predictions:q} > {log:q} 2>&1"
