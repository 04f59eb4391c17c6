# Shared helpers: config validation, wildcard constraints, and the input functions built on reid/pipeline/layout.py.
import json
import shlex
import sys

sys.path.insert(0, workflow.basedir)  # import the project's `reid` even when it is not pip-installed

from reid.pipeline import params as C
from reid.pipeline import layout as D

# The same check as every other entry point (DVC's stage command, each verb): a size limit against YAML alias bombs,
# the JSON schema (workflow/schemas/params.schema.yaml) with one line per problem, then the plugin modules imported
# and the nested sections typed, with ranges, from the code that reads them. Snakemake's own `validate` is not used:
# on a failure it prints the whole config, which an alias bomb makes endless.
C.validate(config, "params.yaml")

wildcard_constraints:
    dataset=C.NAME_PATTERN,  # letters, digits, _ . + - (checked in params.yaml too): no shell or path syntax
    run=C.NAME_PATTERN,
    teacher="|".join(C.teacher_names(config)),  # the keys of `teachers:` in params.yaml
    i="[0-9]+",
    n="[0-9]+",
    derived=C.derived_cache_pattern(),  # the `provides_cache` of registered teacher methods [--pretrained]
    method="[a-z0-9_]+",
    arch="|".join(C.pretrain_archs()),  # reid/engine/pretrain.py ARCHS


def resolved(fn, *names):
    """A params: callable giving the stage's resolved parameters as one shell-quoted JSON word."""

    def _params(wildcards):
        values = [wildcards[n] for n in names]
        return shlex.quote(C.to_json(fn(config, *values)[0]))

    return _params


def caches_arg(deps_fn):
    """A params: callable giving `--cache name=path ...` for the caches among a stage's inputs."""

    def _params(wildcards):
        return D.cache_args(deps_fn(wildcards))

    return _params


def teach_inputs(wildcards):
    """A teacher cache's inputs: its dependencies, or its shard parts when it is sharded."""
    parts = D.shard_paths(config, wildcards.dataset, wildcards.teacher)
    return {"parts": parts} if parts else D.teacher_deps(config, wildcards.dataset, wildcards.teacher)


def teach_command(wildcards, input, output):
    """The teach job's command: the teacher itself, or the merge of its shard parts."""
    ds, teacher = wildcards.dataset, wildcards.teacher
    if D.shard_paths(config, ds, teacher):
        parts = " ".join(shlex.quote(p) for p in input.parts)
        return f"python -m reid merge-shards --out {shlex.quote(output[0])} {parts}"
    resolved_json = shlex.quote(C.to_json(C.stage_teacher(config, ds, teacher)[0]))
    caches = D.cache_args(D.teacher_deps(config, ds, teacher))
    return (f"python -m reid pipeline teach --dataset {shlex.quote(ds)} --teacher {shlex.quote(teacher)} "
            f"--resolved {resolved_json} "
            f"--index {shlex.quote(input.index)} --root {shlex.quote(C.dataset_root(config, ds))} {caches} "
            f"--out {shlex.quote(output[0])}")


def teacher_gpu(wildcards):
    kw, _ = C.stage_teacher(config, wildcards.dataset, wildcards.teacher)
    return 0 if kw.get("backend") == "oracle" else 1


def teacher_threads(wildcards):
    return C.stage_threads("teach", C.stage_teacher(config, wildcards.dataset, wildcards.teacher)[0])


def train_threads(wildcards):
    resolved = C.stage_train(config, wildcards.dataset, wildcards.run)[0]
    return C.stage_threads("train", resolved) * C.train_processes(resolved)


def train_gpus(wildcards):
    return C.train_processes(C.stage_train(config, wildcards.dataset, wildcards.run)[0])


def train_launcher(wildcards):
    """`python`, or torchrun with one process per GPU the job asks for (`train.gpus`)."""
    n = train_gpus(wildcards)
    return f"torchrun --standalone --nproc_per_node {n}" if n > 1 else "python"


def all_targets():
    """metrics.json of every <dataset>/<run> in params.yaml dvc.runs (what `dvc repro` builds too)."""
    return [D.metrics_path(*C.split_target(t)) for t in config["dvc"]["runs"]]


_EVIDENCE: dict[str, dict[str, str]] = {}


def claims_evidence(dataset):
    """run -> the folder its evidence comes from, for every row the dataset's claims compare: the committed ledger
    row when it is current (reid/ledger.py: code and params unchanged since it was measured), else results/<ds>/<run>
    (built by this run, then recorded). Computed once per invocation."""
    if dataset not in _EVIDENCE:
        from reid import ledger as L

        runs = L.claims_runs(config, dataset)
        states = L.status(config, dataset, runs) if config["ablation"].get("ledger", True) else {}
        _EVIDENCE[dataset] = {run: str(L.row_dir(dataset, run) if states.get(run, {}).get("state") == "current"
                                       else f"results/{dataset}/{run}") for run in runs}
        built = [run for run, folder in _EVIDENCE[dataset].items() if folder.startswith("results/")]
        settings = workflow.dag_settings
        forced = bool(settings and settings.forceall)  # --forceall redoes every output anyway
        old = L.code_stale_outputs(config, dataset, built) if states and not forced else []
        if old:  # Snakemake would call them up to date, and the rows would be recorded under the new code
            raise ValueError(f"{len(old)} output(s) the {dataset} claims rows need are older than the code that "
                             f"makes them ({', '.join(old[:5])}{', ...' if len(old) > 5 else ''}): build the rows "
                             f"with `python -m reid ledger build --dataset {dataset}`, which redoes them")
    return _EVIDENCE[dataset]


def claims_inputs(wildcards):
    """per_query.csv (and probe.json of trained rows) of every row x init x seed the claims of the dataset's methods
    compare (ablation.claims), each from the ledger or from results/ (`claims_evidence`)."""
    from reid import ledger as L

    paths = []
    for run, folder in claims_evidence(wildcards.dataset).items():
        paths.append(f"{folder}/per_query.csv")
        if L.has_probe(run):
            paths.append(f"{folder}/probe.json")
    return sorted(paths)


def claims_built(wildcards):
    """The claims rows this invocation builds (not current in the ledger): recorded before the verdicts (none when
    ablation.ledger is false: the ledger is then neither read nor written)."""
    if not config["ablation"].get("ledger", True):
        return ""
    return " ".join(shlex.quote(run) for run, folder in claims_evidence(wildcards.dataset).items()
                    if folder.startswith("results/"))


def ablation_inputs(wildcards):
    from reid.report import ablation_runs

    return [D.metrics_path(wildcards.dataset, run) for run in ablation_runs(config, wildcards.method)]


_PREFLIGHT_DONE: list[bool] = []


def preflighted(fn):
    """An input function that first checks, once per invocation, every input of this invocation's targets
    (reid/pipeline/preflight.py): a real dataset's root and layout, each teacher's weights file, each method's
    ImageNet backbone file, all listed in one error before any job. It runs in the first input function Snakemake
    evaluates, as the targets are known only once the DAG is being built."""

    def wrapped(wildcards):
        if not _PREFLIGHT_DONE:
            from reid.pipeline.preflight import raise_if_missing

            _PREFLIGHT_DONE.append(True)
            settings = workflow.dag_settings
            targets = [str(t) for t in (settings.targets if settings else ())] or ["all"]
            targets = [x for t in targets for x in (all_targets() if t == "all" else [t])]  # the default rule
            raise_if_missing(config, targets)
        return fn(wildcards)

    return wrapped
