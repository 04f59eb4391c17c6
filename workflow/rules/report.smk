# Ablation tables: every row of a method's `ablations` (+ `eval_ablations`) x the seeds in params.yaml `ablation.seeds`.


rule ablation_table:
    input:
        ablation_inputs,
    output:
        md="results/{dataset}/ablation_{method}.md",
        json="results/{dataset}/ablation_{method}.json",
        png="results/{dataset}/ablation_{method}.png",
    log:
        "logs/{dataset}/ablation_{method}.log",
    benchmark:
        "logs/{dataset}/ablation_{method}.benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    shell:
        "python -m reid ablation-table --method {wildcards.method} --dataset {wildcards.dataset} "
        "--out-md {output.md:q} --out-json {output.json:q} --out-png {output.png:q} {input:q} > {log:q} 2>&1"
