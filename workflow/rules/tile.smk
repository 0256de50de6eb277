# Tile coordinates (coordinates only, never pixels), one parquet per sample, with a QC thumbnail
# (tissue contour and tiles) and a JSON of counts, µm/px source and timings beside it.
# `tiling.jobs: sample` runs one job per sample (results/tiles/{sample}.parquet; a failing slide
# stops only itself); `shard` tiles all samples of an embed shard in one job
# (results/tiles/shards/{shard}/{sample}.parquet), which keeps the DAG small for many slides.
# A HEST-Bench sample has pre-cut patches instead of a slide: its tiles table points at them.
# The `tiling` section goes to `histofuse tile --tiling` whole, as one JSON document; as a param,
# a change of any tiling setting re-runs the tile jobs.
import json
import shlex

TILING = json.dumps(config["tiling"], sort_keys=True)


def slide_of(wildcards):
    return SAMPLES.at[wildcards.sample, "slide"]


def expression_of(wildcards):
    return SAMPLES.at[wildcards.sample, "expression"]


def patches_of(wildcards):
    patches = SAMPLES.at[wildcards.sample, "patches"] if "patches" in SAMPLES else ""
    return patches if isinstance(patches, str) else ""


def expression_input(wildcards):
    expression = expression_of(wildcards)
    return [expression] if expression else []


def tile_inputs(wildcards):
    patches = patches_of(wildcards)
    if patches:
        return {"patches": ancient(patches)}
    return {
        "slide": ancient(slide_of(wildcards)),
        "expression": ancient(expression_input(wildcards)),
    }


def tile_source(wildcards, input):
    """`--patches X`, or `--slide X` with the sample's `--expression` file if it has one."""
    if "patches" in input.keys():
        return f"--patches {shlex.quote(input.patches)}"
    flags = f"--slide {shlex.quote(input.slide)}"
    expression = expression_of(wildcards)
    return flags + (f" --expression {shlex.quote(expression)}" if expression else "")


def mpp_flag(wildcards):
    mpp = SAMPLES.at[wildcards.sample, "mpp"] if "mpp" in SAMPLES else None
    if mpp is None or mpp != mpp:
        return ""
    source = SAMPLES.at[wildcards.sample, "mpp_source"] if "mpp_source" in SAMPLES else ""
    return f"--mpp {mpp}" + (f" --mpp-source {source}" if isinstance(source, str) and source else "")


def shard_sample_flags(wildcards):
    return " ".join(f"--sample {s}" for s in PLAN.shards[wildcards.shard])


def shard_hest_bench_flags(wildcards):
    members = set(PLAN.shards[wildcards.shard])
    return " ".join(
        f"--hest-bench {task}={spec['hest_bench']}"
        for task, spec in config["tasks"].items()
        if spec.get("hest_bench") and members & set(PLAN.task_samples(task))
    )


def shard_demo_inputs(wildcards):
    # The generated demo's files of a shard, so that a grown demo cohort is written before its new
    # shard is tiled. A user's sheet lists files that exist (checked at parse time); listing them
    # all would double the DAG's build time at 10k slides.
    if not config["demo"]["enabled"]:
        return []
    rows = SAMPLES.loc[PLAN.shards[wildcards.shard]]
    return [path for col in ("slide", "expression") for path in rows[col] if path]


def shard_tiles(wildcards):
    """The tiles of an embed shard: its samples' files, or the shard's tiling folder."""
    if config["tiling"]["jobs"] == "shard":
        return [f"results/tiles/shards/{wildcards.shard}"]
    return [f"results/tiles/{s}.parquet" for s in PLAN.shards[wildcards.shard]]


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
            "histofuse tile --sample {wildcards.sample} {params.source} --tiling {params.tiling:q}"
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
