# Teacher-cached ReID training as a DAG: each auxiliary model runs once per dataset into an HDF5 cache, the
# trainers read the caches, the exported model needs no teacher. Rules are thin: they call `python -m reid`.
#   snakemake --cores 8 results/synthcc/deskpro/metrics.json
# File layout and dependencies: reid/pipeline/layout.py (shared with dvc.yaml, which `python -m reid dvc-yaml` writes).

configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True


onsuccess:
    # Record in dvc.lock the DVC stages whose outputs this run built or checked, so that a later `dvc repro`
    # recomputes nothing (reid/pipeline/dvc_sync.py; a no-op without `dvc init`).
    from reid.pipeline.dvc_sync import sync_after_snakemake

    sync_after_snakemake(str(f) for job in workflow.dag.jobs for f in job.output)
