# Training and evaluation. Runs are <method>[--<ablation>][--pretrained][--s<seed>]; see reid/pipeline/params.py.


rule pretrain:
    input:
        unpack(preflighted(lambda wc: D.pretrain_deps(config))),
    output:
        weights="models/pretrain/{arch}.pth",
        summary="models/pretrain/{arch}.json",
    params:
        resolved=lambda wc: shlex.quote(C.to_json(C.stage_pretrain(config, wc.arch)[0])),
        dataset=lambda wc: C.pretrain_dataset(config),
        root=lambda wc: C.dataset_root(config, C.pretrain_dataset(config)),
    log:
        "logs/pretrain/{arch}.log",
    benchmark:
        "logs/pretrain/{arch}.benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    threads: lambda wc: C.stage_threads("pretrain", C.stage_pretrain(config, wc.arch)[0])
    shell:
        "python -m reid pipeline pretrain --dataset {params.dataset:q} --arch {wildcards.arch:q} "
        "--resolved {params.resolved} --index {input.index:q} --root {params.root:q} --out {output.weights:q} "
        "> {log:q} 2>&1"


rule train:
    input:
        unpack(preflighted(lambda wc: D.train_deps(config, wc.dataset, wc.run))),
    output:
        model="models/{dataset}/{run}/model.pt",
        log_csv="models/{dataset}/{run}/train_log.csv",
    params:
        resolved=resolved(C.stage_train, "dataset", "run"),
        root=lambda wc: C.dataset_root(config, wc.dataset),
        caches=caches_arg(lambda wc: D.train_deps(config, wc.dataset, wc.run)),
        out_dir=lambda wc: D.model_dir(wc.dataset, wc.run),
        launcher=train_launcher,
    log:
        "logs/{dataset}/train_{run}.log",
    benchmark:
        "logs/{dataset}/train_{run}.benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    threads: train_threads
    resources:
        gpu=train_gpus,
    shell:
        "{params.launcher} -m reid pipeline train --dataset {wildcards.dataset:q} --run {wildcards.run:q} "
        "--resolved {params.resolved} --index {input.index:q} --root {params.root:q} {params.caches} "
        "--out {params.out_dir:q} > {log:q} 2>&1"


rule evaluate:
    input:
        unpack(preflighted(lambda wc: D.evaluate_deps(config, wc.dataset, wc.run))),
    output:
        # `snakemake --report report.html` shows these per run (Results: one category per dataset, one subcategory
        # per run); the caption says what each picture is
        metrics=report("results/{dataset}/{run}/metrics.json", caption="../report/metrics.rst",
                       category="{dataset}", subcategory="{run}", labels={"run": "{run}", "figure": "metrics"}),
        cmc="results/{dataset}/{run}/cmc.csv",
        cmc_png=report("results/{dataset}/{run}/cmc.png", caption="../report/cmc.rst",
                       category="{dataset}", subcategory="{run}", labels={"run": "{run}", "figure": "CMC"}),
        ranks=report("results/{dataset}/{run}/ranks.png", caption="../report/ranks.rst",
                     category="{dataset}", subcategory="{run}", labels={"run": "{run}", "figure": "rank list"}),
        per_query="results/{dataset}/{run}/per_query.csv",
    params:
        resolved=resolved(C.stage_evaluate, "dataset", "run"),
        root=lambda wc: C.dataset_root(config, wc.dataset),
        caches=caches_arg(lambda wc: D.evaluate_deps(config, wc.dataset, wc.run)),
    log:
        "logs/{dataset}/evaluate_{run}.log",
    benchmark:
        "logs/{dataset}/evaluate_{run}.benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    threads: C.stage_threads("evaluate", {})
    shell:
        "python -m reid pipeline evaluate --dataset {wildcards.dataset:q} --run {wildcards.run:q} "
        "--resolved {params.resolved} --model {input.model:q} --index {input.index:q} --root {params.root:q} "
        "{params.caches} --out {output.metrics:q} > {log:q} 2>&1"


rule export:
    input:
        model="models/{dataset}/{run}/model.pt",
    output:
        directory("models/{dataset}/{run}/onnx"),
    log:
        "logs/{dataset}/export_{run}.log",
    conda:
        "../../envs/train.yaml"
    threads: C.STAGE_THREADS["export"]
    shell:
        "python -m reid export --model {input.model:q} --out {output:q} > {log:q} 2>&1"
