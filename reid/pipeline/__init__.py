"""Orchestration: everything Snakemake and DVC share, so the two DAGs run the same stages with the same values.

- `params`   params.yaml -> each stage's resolved keyword arguments and the exact keys it reads; run names;
             plugin modules; the one derivation of a dataset's root.
- `check`    params.yaml sections typed from the code that reads them (constructor signatures, TrainConfig).
- `layout`   the file layout (data/, cache/, models/, results/) and every stage's input files.
- `stage`    `python -m reid pipeline <stage>`: the one command both orchestrators run per job.
- `dvc_yaml` `python -m reid dvc-yaml`: dvc.yaml written from `layout` (explicit stages, derived code deps).
- `dvc_sync` `python -m reid dvc-commit`: record in dvc.lock what Snakemake built.
"""
