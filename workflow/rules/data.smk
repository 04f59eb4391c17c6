# Datasets: generate a synthetic world (only for datasets with `generate:`), then index it.


rule synth:
    output:
        directory("data/{dataset}"),
    params:
        resolved=resolved(C.stage_synth, "dataset"),
    log:
        "logs/{dataset}/synth.log",
    benchmark:
        "logs/{dataset}/synth.benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    threads: C.STAGE_THREADS["synth"]
    shell:
        "python -m reid pipeline synth --dataset {wildcards.dataset:q} --resolved {params.resolved} "
        "--out {output:q} > {log:q} 2>&1"


rule index:
    input:
        unpack(preflighted(lambda wc: D.index_deps(config, wc.dataset))),
    output:
        "cache/{dataset}/index.csv",
    params:
        resolved=resolved(C.stage_index, "dataset"),
        root=lambda wc: C.dataset_root(config, wc.dataset),
    log:
        "logs/{dataset}/index.log",
    benchmark:
        "logs/{dataset}/index.benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    threads: C.STAGE_THREADS["index"]
    shell:
        "python -m reid pipeline index --dataset {wildcards.dataset:q} --resolved {params.resolved} "
        "--root {params.root:q} --out {output:q} > {log:q} 2>&1"
