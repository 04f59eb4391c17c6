# Auxiliary models, each run once per dataset into cache/<dataset>/<teacher>.h5 (see README "Teachers").


rule teach:
    input:
        unpack(lambda wc: D.teacher_deps(config, wc.dataset, wc.teacher)),
    output:
        "cache/{dataset}/{teacher}.h5",
    params:
        resolved=resolved(C.stage_teacher, "dataset", "teacher"),
        root=lambda wc: D.root_of(config, wc.dataset),
        caches=caches_arg(lambda wc: D.teacher_deps(config, wc.dataset, wc.teacher)),
    log:
        "logs/{dataset}/teach_{teacher}.log",
    benchmark:
        "logs/{dataset}/teach_{teacher}.benchmark.tsv"
    conda:
        "../../envs/teachers.yaml"
    threads: teacher_threads
    resources:
        gpu=teacher_gpu,
    shell:
        "python -m reid pipeline teach --dataset {wildcards.dataset} --teacher {wildcards.teacher} "
        "--resolved {params.resolved} --index {input.index:q} --root {params.root:q} {params.caches} "
        "--out {output:q} > {log:q} 2>&1"


rule teacher_outputs:
    input:
        unpack(lambda wc: D.derived_deps(config, wc.dataset, wc.derived)),
    output:
        "cache/{dataset}/{derived}.h5",
    params:
        run=lambda wc: C.derived_caches()[wc.derived],
        resolved=lambda wc: shlex.quote(
            C.to_json(C.stage_evaluate(config, wc.dataset, C.derived_caches()[wc.derived])[0])
        ),
        root=lambda wc: D.root_of(config, wc.dataset),
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
        "python -m reid pipeline teacher-outputs --dataset {wildcards.dataset} --run {params.run} "
        "--resolved {params.resolved} --model {input.model:q} --index {input.index:q} --root {params.root:q} "
        "{params.caches} --out {output:q} > {log:q} 2>&1"
