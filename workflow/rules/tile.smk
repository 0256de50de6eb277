# Spot-centred patch coordinates per sample (coordinates only, never pixels).
rule tile:
    input:
        slide=ancient(slide_of),
        expression=ancient(expression_of),
    output:
        "results/tiles/{sample}.parquet",
    params:
        patch_um=config["tiling"]["patch_um"],
        target_mpp=config["tiling"]["target_mpp"],
        mpp=mpp_flag,
    benchmark:
        "logs/benchmark/tile/{sample}.tsv"
    log:
        "logs/tile/{sample}.log",
    conda:
        "../../envs/histofuse.yaml"
    shell:
        "histofuse tile --sample {wildcards.sample} --slide {input.slide:q}"
        " --expression {input.expression:q} --patch-um {params.patch_um}"
        " --target-mpp {params.target_mpp} {params.mpp} --out {output:q} > {log:q} 2>&1"
