# Ablation tables: every row of a method's ABLATIONS x the seeds in params.yaml `ablation.seeds`.


rule ablation_table:
    input:
        ablation_inputs,
    output:
        md="results/{dataset}/ablation_{method}.md",
        json="results/{dataset}/ablation_{method}.json",
    log:
        "logs/{dataset}/ablation_{method}.log",
    benchmark:
        "logs/{dataset}/ablation_{method}.benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    shell:
        "python -m reid ablation-table --method {wildcards.method} --dataset {wildcards.dataset} "
        "--out-md {output.md:q} --out-json {output.json:q} {input:q} > {log:q} 2>&1"
