# One job per (encoder, shard): load the model once, embed every tile of the shard's samples into
# one Zarr store. The manifest, written last, is what downstream rules depend on.
rule embed:
    input:
        tiles=shard_tiles,
        weights=weights_input,
    output:
        store=directory("results/features/{encoder}/{shard}.zarr"),
        manifest="results/features/{encoder}/{shard}.manifest.json",
    params:
        key=embed_key,
        weights=weights_flag,
        batch_size=config["embed"]["batch_size"],
        num_workers=config["embed"]["num_workers"],
        device=config["embed"]["device"],
        dtype=config["embed"]["dtype"],
    threads: config["embed"]["threads"]
    resources:
        gpu=config["embed"]["gpu"],
        slurm_extra=refused_retry_after_user_error,
    benchmark:
        "logs/benchmark/embed/{encoder}/{shard}.tsv"
    log:
        "logs/embed/{encoder}/{shard}.log",
    conda:
        "../../envs/histofuse.yaml"
    shell:
        "OMP_NUM_THREADS={threads} histofuse embed --encoder {wildcards.encoder:q}"
        " --tiles {input.tiles:q} --out {output.store:q} {params.weights}"
        """ --embed '{{"batch_size": {params.batch_size}, "num_workers": {params.num_workers},"""
        """ "device": "{params.device}", "dtype": "{params.dtype}"}}' > {log:q} 2>&1"""
