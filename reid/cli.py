"""`python -m reid <verb>`: the one entry point both orchestrators and users call.

Each verb lives in a module that provides `add_arguments(parser)` and `main(args) -> int` (a module serving
several verbs names its functions in FUNCTIONS); modules are imported only when their verb runs, so
`python -m reid --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

VERBS: dict[str, tuple[str, str]] = {
    "synth": ("reid.data.synthetic", "generate a synthetic world (synthcc, synthocc) in a real dataset layout"),
    "index": ("reid.data.datasets", "scan a dataset folder into an index CSV"),
    "teach": ("reid.teachers.commands", "run one auxiliary model over an index into an HDF5 cache"),
    "merge-shards": ("reid.teachers.commands", "join the shard files of a teacher cache"),
    "inspect": ("reid.viz.contact_sheet", "print a cache's provenance and statistics; draw a contact sheet"),
    "verify": ("reid.cache.verify", "read every row of a cache and list unreadable rows by index and path"),
    "export-schp": ("reid.teachers.schp_net", "export the pure-PyTorch SCHP network to ONNX"),
    "isp-iou": ("reid.engine.isp_iou", "IoU of ISP parts against the parsing cache (paper Table 3)"),
    "pretrain": ("reid.engine.pretrain", "train a miniature ImageNet stand-in backbone (official weights layout)"),
    "train": ("reid.engine.commands", "train a method"),
    "evaluate": ("reid.engine.commands", "evaluate a trained model with the dataset's protocol"),
    "probe": ("reid.engine.probe", "measure a trained model's mechanism (e.g. PGFL-KD group-map support)"),
    "teacher-outputs": ("reid.engine.commands", "cache a trained teacher model's outputs for its student"),
    "export": ("reid.deploy.export", "export a trained model.pt to ONNX (the deployed embedding) + model.json"),
    "embed": ("reid.deploy.embed", "embed a folder of crops or an index into an HDF5 file (model.pt or model.onnx)"),
    "search": ("reid.deploy.search", "rank a gallery of embeddings for queries with the method's distance"),
    "weights": ("reid.weights_fetch", "download the official weight files (resume, checksums) into weights/"),
    "check": ("reid.pipeline.preflight", "list every missing input of targets (dataset, teacher and backbone files)"),
    "pipeline": ("reid.pipeline.stage", "run one pipeline stage resolved from params.yaml (used by Snakemake and DVC)"),
    "dvc-yaml": ("reid.pipeline.dvc_yaml", "write dvc.yaml from params.yaml (the DVC twin of the Snakefile)"),
    "dvc-commit": ("reid.pipeline.dvc_sync", "record in dvc.lock the DVC stages whose outputs Snakemake built"),
    "ablation-table": ("reid.report", "assemble metrics.json files into an ablation table (Markdown + JSON)"),
    "claims": ("reid.eval.claims", "decide each declared claim: paired difference, 95 percent interval, verdict"),
    "show-metrics": ("reid.report", "print metrics.json files as a short table"),
    "ledger": ("reid.ledger", "the committed evidence of the claims: each row's state (current / stale), record rows"),
}

# Verbs whose module serves several verbs: verb -> (add-arguments function, main function).
FUNCTIONS: dict[str, tuple[str, str]] = {
    "merge-shards": ("add_merge_arguments", "merge_main"),
    "evaluate": ("add_evaluate_arguments", "main_evaluate"),
    "teacher-outputs": ("add_teacher_outputs_arguments", "main_teacher_outputs"),
    "show-metrics": ("add_show_metrics_arguments", "main_show_metrics"),
    "isp-iou": ("add_iou_arguments", "iou_main"),
}


# Help of the options many verbs share, filled in where a verb does not word its own.
COMMON_HELP: dict[str, str] = {
    "--index": "dataset index CSV (`python -m reid index` writes it)",
    "--root": "the dataset root the index paths are relative to",
    "--batch-size": "images per batch",
    "--workers": "data loader worker processes (0: in the main process)",
    "--device": "auto (CUDA when available) | cpu | cuda[:i]",
    "--opset": "ONNX opset version",
}


def parse_caches(items: list[str] | None) -> dict[str, str]:
    """`--cache name=path` pairs -> dict; a malformed item is an error naming it."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--cache expects NAME=PATH, got {item!r}")
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="reid", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (a teacher or method outside the package, importable from the "
                             "working directory); repeatable. Files never choose modules: a model.pt of a plugin "
                             "method loads only after its module is named here or in params.yaml")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    # Parse the verb first, then let its module define the rest of the arguments.
    head, rest = parser.parse_known_args(argv)
    if head.verb is None:
        parser.print_help()
        return 2
    for plugin in head.plugin:
        from reid.registry import import_plugin

        import_plugin(plugin, "--plugin")
    module = importlib.import_module(VERBS[head.verb][0])
    verb_parser = verb_parser_of(head.verb)
    run = getattr(module, FUNCTIONS.get(head.verb, ("add_arguments", "main"))[1])
    args = verb_parser.parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if head.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(run(args) or 0)
    except SystemExit as exc:  # a verb's `raise SystemExit("message")`: the same one-line form as the errors below
        if not isinstance(exc.code, str):
            raise
        print(f"reid {head.verb}: error: {exc.code}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - user errors become one line; anything else keeps its traceback
        if head.verbose or not is_user_error(exc):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"reid {head.verb}: error: {message}", file=sys.stderr)
        return 1


def verb_parser_of(verb: str) -> argparse.ArgumentParser:
    """A verb's argument parser: its module's options, the shared help where it has none, defaults shown."""
    module_name, help_text = VERBS[verb]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"reid {verb}", description=help_text,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    getattr(module, FUNCTIONS.get(verb, ("add_arguments", "main"))[0])(parser)
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public iterator over its actions
        if action.help is None and action.option_strings:
            action.help = COMMON_HELP.get(action.option_strings[-1])
    return parser


def is_user_error(exc: BaseException) -> bool:
    """Errors about the user's files, parameters or disk, whose message names the file or key: printed as one
    line (`-v` shows the traceback). Programming errors (TypeError, AttributeError...) keep their traceback."""
    from reid.cache.h5 import CacheError
    from reid.locking import OutputLocked

    return isinstance(exc, (CacheError, OutputLocked, ValueError, FileNotFoundError, IsADirectoryError,
                            NotADirectoryError, PermissionError, KeyError)) or (
        isinstance(exc, OSError) and exc.errno in (28, 122))
