# Tile coordinates (coordinates only, never pixels), one parquet per sample, with a QC thumbnail
# (tissue contour and tiles) and a JSON of counts, µm/px source and timings beside it.
# `tiling.jobs: sample` runs one job per sample (results/tiles/{sample}.parquet; a failing slide
# stops only itself); `shard` tiles all samples of an embed shard in one job
# (results/tiles/shards/{shard}/{sample}.parquet), which keeps the DAG small for many slides.
# A HEST-Bench sample has pre-cut patches instead of a slide: its tiles table points at them.
# The `key` param is the `tiling` section without its run policy (PLAN.tiling_key): changing
# `on_error` (passed apart) or `jobs` reruns no tile job, and so no embed job.
if config["tiling"]["jobs"] == "sample":

    rule tile:
        input:
            unpack(tile_inputs),
        output:
            tiles="results/tiles/{sample}.parquet",
            qc=report(
                "results/tiles/{sample}.qc.png", caption="../report/qc.rst", category="Tiling QC"
            ),
            stats="results/tiles/{sample}.json",
        params:
            key=PLAN.tiling_key,
            on_error=on_error_flag,
            mpp=mpp_flag,
            source=tile_source,
        resources:
            slurm_extra=refused_retry_after_user_error,
        benchmark:
            "logs/benchmark/tile/{sample}.tsv"
        log:
            "logs/tile/{sample}.log",
        conda:
            "../../envs/histofuse.yaml"
        shell:
            "histofuse tile --sample {wildcards.sample:q} {params.source} --tiling {params.key:q}"
            " --on-error {params.on_error} {params.mpp} --out {output.tiles:q} --qc {output.qc:q}"
            " --stats {output.stats:q}"
            " > {log:q} 2>&1"

else:

    rule tile_shard:
        input:
            # Only the sheet: the sheet's files were checked at parse time, and listing 20k
            # slide files as inputs would double the DAG's build time at 10k slides.
            sheet=ancient(config["samples"]),
            demo=ancient(shard_demo_inputs),
        output:
            directory("results/tiles/shards/{shard}"),
        params:
            samples=shard_sample_flags,
            hest_bench=shard_hest_bench_flags,
            key=PLAN.tiling_key,
            on_error=on_error_flag,
        resources:
            slurm_extra=refused_retry_after_user_error,
        benchmark:
            "logs/benchmark/tile/{shard}.tsv"
        log:
            "logs/tile/{shard}.log",
        conda:
            "../../envs/histofuse.yaml"
        shell:
            "histofuse tile --sheet {input.sheet:q} {params.samples} {params.hest_bench}"
            " --tiling {params.key:q} --on-error {params.on_error} --out-dir {output:q}"
            " > {log:q} 2>&1"
