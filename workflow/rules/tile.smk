# Tile coordinates (coordinates only, never pixels), one parquet per sample, with a QC thumbnail
# (tissue contour and tiles) and a JSON of counts, µm/px source and timings beside it.
# `tiling.jobs: sample` runs one job per sample (results/tiles/{sample}.parquet; a failing slide
# stops only itself); `shard` tiles all samples of an embed shard in one job
# (results/tiles/shards/{shard}/{sample}.parquet), which keeps the DAG small for many slides.
# A HEST-Bench sample has pre-cut patches instead of a slide: its tiles table points at them.
# Helpers: workflow/rules/common.smk (the `tiling` section goes to `histofuse tile --tiling`
# whole, as one JSON document; as a param, a change of any tiling setting re-runs the tile jobs).
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
            tiling=TILING,
            mpp=mpp_flag,
            source=tile_source,
        benchmark:
            "logs/benchmark/tile/{sample}.tsv"
        log:
            "logs/tile/{sample}.log",
        conda:
            "../../envs/histofuse.yaml"
        shell:
            "histofuse tile --sample {wildcards.sample:q} {params.source} --tiling {params.tiling:q}"
            " {params.mpp} --out {output.tiles:q} --qc {output.qc:q} --stats {output.stats:q}"
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
            tiling=TILING,
        benchmark:
            "logs/benchmark/tile/{shard}.tsv"
        log:
            "logs/tile/{shard}.log",
        conda:
            "../../envs/histofuse.yaml"
        shell:
            "histofuse tile --sheet {input.sheet:q} {params.samples} {params.hest_bench}"
            " --tiling {params.tiling:q} --out-dir {output:q} > {log:q} 2>&1"
