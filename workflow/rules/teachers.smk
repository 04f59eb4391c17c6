# Auxiliary models, each run once per dataset into cache/<dataset>/<teacher>.h5 (see README "Teachers").


rule teach:
    # One job, or (teachers.<t>.shards: N > 1) the merge of N shard jobs (rule teach_shard) into the same bytes.
    input:
        unpack(preflighted(teach_inputs)),
    output:
        "cache/{dataset}/{teacher}.h5",
    params:
        resolved=resolved(C.stage_teacher, "dataset", "teacher"),  # tracked: a change reruns the cache
        command=teach_command,
    log:
        "logs/{dataset}/teach_{teacher}.log",
    benchmark:
        "logs/{dataset}/teach_{teacher}.benchmark.tsv"
    conda:
        "../../envs/teachers.yaml"
    threads: teacher_threads
    resources:
        gpu=lambda wc: 0 if D.shard_paths(config, wc.dataset, wc.teacher) else teacher_gpu(wc),
    shell:
        "{params.command} > {log:q} 2>&1"


rule teach_shard:
    input:
        unpack(preflighted(lambda wc: D.teacher_deps(config, wc.dataset, wc.teacher))),
    output:
        "cache/{dataset}/{teacher}.shards/{i}-of-{n}.h5",
    params:
        resolved=resolved(C.stage_teacher, "dataset", "teacher"),
        root=lambda wc: C.dataset_root(config, wc.dataset),
        caches=caches_arg(lambda wc: D.teacher_deps(config, wc.dataset, wc.teacher)),
    log:
        "logs/{dataset}/teach_{teacher}.{i}-of-{n}.log",
    conda:
        "../../envs/teachers.yaml"
    threads: teacher_threads
    resources:
        gpu=teacher_gpu,
    shell:
        "python -m reid pipeline teach --dataset {wildcards.dataset:q} --teacher {wildcards.teacher:q} "
        "--resolved {params.resolved} --index {input.index:q} --root {params.root:q} {params.caches} "
        "--shard {wildcards.i:q}/{wildcards.n:q} --out {output:q} > {log:q} 2>&1"


rule teacher_outputs:
    input:
        unpack(preflighted(lambda wc: D.derived_deps(config, wc.dataset, wc.derived))),
    output:
        "cache/{dataset}/{derived}.h5",
    params:
        run=lambda wc: C.derived_cache_run(wc.derived),
        resolved=lambda wc: shlex.quote(
            C.to_json(C.stage_evaluate(config, wc.dataset, C.derived_cache_run(wc.derived))[0])
        ),
        root=lambda wc: C.dataset_root(config, wc.dataset),
        caches=caches_arg(lambda wc: D.derived_deps(config, wc.dataset, wc.derived)),
    log:
        "logs/{dataset}/outputs_{derived}.log",
    benchmark:
        "logs/{dataset}/outputs_{derived}.benchmark.tsv"
    conda:
        "../../envs/teachers.yaml"
    threads: C.STAGE_THREADS["teacher-outputs"]
    resources:
        gpu=1,
    shell:
        "python -m reid pipeline teacher-outputs --dataset {wildcards.dataset:q} --run {params.run:q} "
        "--resolved {params.resolved} --model {input.model:q} --index {input.index:q} --root {params.root:q} "
        "{params.caches} --out {output:q} > {log:q} 2>&1"
