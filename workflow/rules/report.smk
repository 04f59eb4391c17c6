# Ablation tables: every row of a method's `ablations` (+ `eval_ablations`) x the seeds in params.yaml `ablation.seeds`.


rule ablation_table:
    input:
        preflighted(ablation_inputs),
    output:
        md="results/{dataset}/ablation_{method}.md",
        json="results/{dataset}/ablation_{method}.json",
        png=report("results/{dataset}/ablation_{method}.png", caption="../report/ablation.rst",
                   category="{dataset}", subcategory="ablations", labels={"table": "{method}"}),
    log:
        "logs/{dataset}/ablation_{method}.log",
    benchmark:
        "logs/{dataset}/ablation_{method}.benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    shell:
        "python -m reid ablation-table --method {wildcards.method:q} --dataset {wildcards.dataset:q} "
        "--out-md {output.md:q} --out-json {output.json:q} --out-png {output.png:q} {input:q} > {log:q} 2>&1"


rule claims:
    input:
        preflighted(claims_inputs),
    output:
        md=report("results/{dataset}/claims.md", caption="../report/claims.rst", category="{dataset}",
                  subcategory="claims", labels={"table": "claims"}),
        json="results/{dataset}/claims.json",
    params:
        methods=lambda wc: " ".join(shlex.quote(m) for m in config["ablation"]["claims"][wc.dataset]),
        seeds=lambda wc: " ".join(shlex.quote(str(s)) for s in config["ablation"].get("seeds", [0, 1, 2])),
        init=lambda wc: " ".join(shlex.quote(i) for i in config["ablation"].get("init", ["scratch"])),
        built=claims_built,
        ledger=lambda wc: int(bool(config["ablation"].get("ledger", True))),
        ledger_dir=lambda wc: D.ledger_dir(wc.dataset),
    log:
        "logs/{dataset}/claims.log",
    conda:
        "../../envs/train.yaml"
    threads: 1
    shell:
        # With the ledger (reid/ledger.py), the rows this run built are recorded first; the verdicts are then
        # assembled from the ledger alone (every row now current), into results/ and into ledger/<dataset>/ (the
        # README table's source): the same files the DVC stage claims-<dataset> writes. Without it, the verdicts
        # read results/.
        "{{ if [ {params.ledger} = 1 ]; then "
        "python -m reid ledger record --dataset {wildcards.dataset:q} --runs {params.built} && "
        "python -m reid ledger assemble --dataset {wildcards.dataset:q} --out \"$(dirname {output.json:q})\" "
        "{params.ledger_dir:q}; else "
        "python -m reid claims --dataset {wildcards.dataset:q} --methods {params.methods} --seeds {params.seeds} "
        "--init {params.init} --evidence {input:q} --out-md {output.md:q} --out-json {output.json:q}; fi; }} "
        "> {log:q} 2>&1"


rule probe:
    input:
        unpack(preflighted(lambda wc: D.probe_deps(config, wc.dataset, wc.run))),
    output:
        "results/{dataset}/{run}/probe.json",
    params:
        root=lambda wc: C.dataset_root(config, wc.dataset),
        caches=caches_arg(lambda wc: D.probe_deps(config, wc.dataset, wc.run)),
    log:
        "logs/{dataset}/probe_{run}.log",
    conda:
        "../../envs/train.yaml"
    threads: 2
    shell:
        "python -m reid probe --model {input.model:q} --index {input.index:q} --root {params.root:q} {params.caches} "
        "--out {output:q} > {log:q} 2>&1"
