"""``tlops``: one subcommand per stage, plus ``status``, ``params`` and ``run-all``.

    tlops <stage> [--params params.yaml] [--set key.path=value ...] [--<path> PATH ...] [--<flag>]
    tlops status        which stages are built and which are up to date (dvc status)
    tlops params        print the validated params (after --set overrides) as YAML
    tlops run-all       run every built stage through `dvc repro`, then say where outputs are
    tlops predict SRC   classify a batch of images with the champion (or --model); predictions file
    tlops serve         the champion over HTTP (POST /predict), following the registry; params.serve
    tlops registry ACTION   list | show VERSION | history | promote VERSION [--alias A] [--force --reason R] |
                        rollback [--to VERSION] [--reason R]
    tlops --version     the installed tlops version
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

from pipeline.common.errors import (BAD_INPUT_ERRORS, DISK_FULL, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_REFUSED,
                                    EXIT_TRANSIENT, TransientError, describe_error, raised_in_pipeline)
from pipeline.common.io import replaced_as_set
from pipeline.common.logs import get_logger, setup_logging
from pipeline.common.threads import run_threads
from pipeline.config import ConfigError, load_params
from pipeline.project import (declared_options, declared_paths, dvc, dvc_stages, dvc_status, find_root, main_checkout,
                              replaced_outputs)
from pipeline.stages import STAGES, get_stage

__all__ = ["main"]
log = get_logger(__name__)
_TOOLS = {
    "status": "which stages are built and up to date",
    "params": "print the validated params as YAML",
    "run-all": "run every built stage through dvc repro",
    "drift-ui": "start the Evidently review UI over the drift reports of every run",
    "predict": "classify a batch of images (folder, table, s3://, dataset) with the champion or --model",
    "serve": "answer POST /predict over HTTP with the champion (or --model); /health, /ready, /metrics",
    "registry": "list | show VERSION | history | promote VERSION | rollback: the model registry's versions and aliases",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tlops`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"tlops {importlib.metadata.version('tlops')}")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in _TOOLS:
            return _run_tool(command, rest)
        return _run_stage(command, rest)
    except (TransientError, ConnectionError, TimeoutError) as err:
        print(f"tlops {command}: transient error (worth a retry): {describe_error(err)}", file=sys.stderr)
        return EXIT_TRANSIENT
    except (ConfigError, *BAD_INPUT_ERRORS) as err:
        if isinstance(err, ConfigError) or raised_in_pipeline(err):
            print(f"tlops {command}: error: {describe_error(err)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return _internal_error(command, err)
    except OSError as err:
        if err.errno not in DISK_FULL:
            return _internal_error(command, err)
        where = f" writing {err.filename}" if err.filename else ""
        print(f"tlops {command}: error: no space left on the device{where}; free space and rerun (the stage's "
              "previous outputs are kept)", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as err:  # noqa: BLE001 (every failure ends in one line naming its cause)
        return _internal_error(command, err)


def _internal_error(command: str, err: Exception) -> int:
    """A failure no input check caught: the traceback for whoever debugs it, then the one line."""
    traceback.print_exception(err, file=sys.stderr)
    print(f"tlops {command}: internal error: {describe_error(err, internal=True)}", file=sys.stderr)
    return EXIT_INTERNAL


def _usage() -> str:
    width = max(len(name) for name in [*_TOOLS, *(s.name for s in STAGES)])
    lines = ["usage: tlops <command> [--params FILE] [--set key.path=value ...] [options]",
             "       tlops --version", "", "stages:"]
    for spec in STAGES:
        lines.append(f"  {spec.name:<{width}}  {spec.summary}")
    lines += ["", "tools:"] + [f"  {name:<{width}}  {text}" for name, text in _TOOLS.items()]
    return "\n".join(lines)


def _common_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--params", type=Path, default=None, help="params file (default: <project>/params.yaml)")
    parser.add_argument("--profile", default=None, metavar="NAME",
                        help="apply params.<NAME>.yaml over params.yaml first, e.g. --profile gpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one param for this run, e.g. --set freeze.epochs=3 (repeatable)")
    return parser


def _run_stage(name: str, argv: list[str]) -> int:
    spec = get_stage(name)
    module = spec.load()
    root = find_root()
    parser = _common_parser(f"tlops {name}")
    declared = declared_options(root, name)
    for field in dataclasses.fields(module.Args):
        flag = "--" + field.name.replace("_", "-")
        if field.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true", help=field.metadata.get("help"))
        else:
            default = declared.get(field.name)
            if default is None and field.default is not dataclasses.MISSING:
                default = field.default
            parser.add_argument(flag, type=Path, default=None if default is None else Path(default),
                                required=default is None and field.default is dataclasses.MISSING,
                                help=field.metadata.get("help"))
    ns = parser.parse_args(argv)
    params = load_params(ns.params or root / "params.yaml", ns.overrides, ns.profile)
    setup_logging(params.common.log_level)
    args = module.Args(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(module.Args)})
    # a stage that may run as several processes (finetune under torchrun) says so after its params are read
    launch = getattr(module, "launch", None)
    outputs = _output_args(args, declared, replaced_outputs(root, name)) if _replaces_outputs() else []
    # the stage computes with its share of the machine's cores (its ranks split it), not with all of them
    with run_threads(params.orchestrate.threads, f"tlops {name}"):
        ranks = launch(params, argv) if launch is not None else None
        with replaced_as_set(outputs):
            summary = ranks() if ranks is not None else module.run(params, args)
    if summary is not None and os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 prints it
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


def _replaces_outputs() -> bool:
    """Whether this process replaces the stage's outputs as a set. Under torchrun only one does: the
    `tlops` process that launched the ranks, or rank 0 when torchrun was started by hand."""
    if "RANK" not in os.environ:
        return True
    from pipeline.training.ddp import LAUNCHER_ENV

    return os.environ["RANK"] == "0" and LAUNCHER_ENV not in os.environ


def _output_args(args: object, declared: dict, outputs: list[str]) -> list[Path]:
    """The paths given for the options whose dvc.yaml value is an output (or a folder of outputs)."""
    chosen = []
    for field in dataclasses.fields(args):
        default, value = declared.get(field.name), getattr(args, field.name)
        if isinstance(default, str) and value is not None and any(
                Path(out) == Path(default) or Path(default) in Path(out).parents for out in outputs):
            chosen.append(Path(value))
    return chosen


def _run_tool(command: str, argv: list[str]) -> int:
    parser = _common_parser(f"tlops {command}")
    if command == "predict":
        _predict_options(parser)
    if command == "registry":
        _registry_options(parser)
    if command == "serve":
        _serve_options(parser)
    ns = parser.parse_args(argv)
    root = find_root()
    if command == "serve":
        return _serve(root, ns)
    if command == "predict":
        return _predict(root, ns)
    if command == "registry":
        return _registry(root, ns)
    if command == "params":
        import yaml

        params = load_params(ns.params or root / "params.yaml", ns.overrides, ns.profile)
        print(yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False), end="")
        return 0
    if command == "status":
        return _status(root)
    if command == "run-all":
        limits = load_params(ns.params or root / "params.yaml", ns.overrides, ns.profile).orchestrate  # fail fast
        if ns.overrides or ns.profile:
            raise ValueError("run-all runs dvc repro on params.yaml as it is: edit params.yaml instead of "
                             "--set / --profile (or start a run: make run PROFILE=gpu)")
        dvc(root, "repro", capture=False, timeout=limits.stage_timeout_s * len(dvc_stages(root)),
            limit_name="orchestrate.stage_timeout_s x stages")
        _status(root)
        _print_outputs(root)
        return 0
    from pipeline.drift.workspace import serve_ui  # drift-ui: the one tool left

    params = load_params(ns.params or root / "params.yaml", ns.overrides, ns.profile)
    workspace = main_checkout(root) / declared_options(root, "drift")["workspace"]
    return serve_ui(workspace, params.drift.ui_host, params.drift.ui_port)


def _predict_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="the images: a folder (any depth), a .csv/.parquet table of paths or URIs, "
                                       "s3://bucket/prefix, or a dataset folder written by ingest or shift")
    parser.add_argument("--model", default=None, metavar="REF",
                        help="champion (default), a registry version (run name or run-<name> tag), or a model "
                             "folder (model.pt + card.json)")
    parser.add_argument("--out", type=Path, default=Path("predictions"),
                        help="folder for predictions.parquet, predictions.csv and summary.json (replaced whole)")
    parser.add_argument("--top-k", type=int, default=3, help="classes and probabilities kept per image")


def _predict(root: Path, ns: argparse.Namespace) -> int:
    import tempfile

    from pipeline.prediction.batch import predict_batch, read_batch
    from pipeline.prediction.models import resolve_model
    from pipeline.registry import open_registry

    if ns.top_k < 1:
        raise ValueError(f"--top-k {ns.top_k}: must be at least 1")
    params = load_params(ns.params or root / "params.yaml", ns.overrides, ns.profile)
    registry = open_registry(params.promote.registry, main_checkout(root))
    with tempfile.TemporaryDirectory(prefix="tlops-predict-") as scratch, \
            run_threads(params.orchestrate.threads, "tlops predict"):
        model = resolve_model(ns.model, registry, Path(scratch))
        summary = predict_batch(read_batch(ns.source, params), model, params, ns.out, top_k=ns.top_k)
    refused = f"; {summary['refused']} refused (see the reason column)" if summary["refused"] else ""
    print(f"{summary['predicted']} of {summary['images']} images classified by {summary['model_version']}"
          f"{refused}: {ns.out / 'predictions.parquet'} (and .csv)")
    return 0


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="REF",
                        help="champion (default: follows the registry's champion), a registry version (run name or "
                             "run-<name> tag) or a model folder (pinned)")
    parser.add_argument("--runtime", choices=("onnx", "torchscript", "eager"), default=None,
                        help="what runs the model (default serve.runtime: onnx)")
    parser.add_argument("--host", default=None, help="address to listen on (default serve.host)")
    parser.add_argument("--port", type=int, default=None, help="port (default serve.port)")
    parser.add_argument("--workers", type=int, default=None, help="server processes (default serve.workers)")


def _serve(root: Path, ns: argparse.Namespace) -> int:
    from pipeline.serving.server import ServeOptions, serve

    if ns.workers is not None and ns.workers < 1:
        raise ValueError(f"--workers {ns.workers}: must be at least 1")
    return serve(ServeOptions(main_checkout(root), ns.params or root / "params.yaml", ns.overrides, ns.profile,
                              ns.model, ns.runtime, ns.host, ns.port, ns.workers))


def _registry_options(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every version, its decision and the aliases on it")
    actions.add_parser("show", help="a version's decision (its blessing's checks) and history").add_argument("version")
    actions.add_parser("history", help="every alias move: when, what, from what, who, why")
    promote = actions.add_parser("promote", help="point the champion (or --alias) at a version; the champion "
                                                 "through the blessing unless --force")
    promote.add_argument("version")
    promote.add_argument("--alias", default="champion", help="champion (default), challenger or any name")
    promote.add_argument("--force", action="store_true", help="skip the blessing (needs --reason)")
    promote.add_argument("--reason", default="", help="why, for the history")
    rollback = actions.add_parser("rollback", help="the champion back to the version it replaced, or --to one "
                                                   "that was champion before")
    rollback.add_argument("--to", default=None, metavar="VERSION")
    rollback.add_argument("--reason", default="", help="why, for the history")


def _registry(root: Path, ns: argparse.Namespace) -> int:
    from pipeline.promotion import operations
    from pipeline.registry import open_registry

    params = load_params(ns.params or root / "params.yaml", ns.overrides, ns.profile)
    registry = open_registry(params.promote.registry, main_checkout(root))
    if ns.action == "list":
        _print_rows(operations.version_rows(registry), f"no versions in {registry.location}")
    elif ns.action == "show":
        print(json.dumps(operations.show_version(registry, ns.version), indent=2))
    elif ns.action == "history":
        _print_rows([{"at": e.get("at"), "action": e.get("action"), "alias": e.get("alias"),
                      "version": e.get("version"), "previous": e.get("previous"),
                      "by": "{user}@{host}".format(**e.get("by", {})) + (
                          f" (flow run {e['by']['flow_run']})" if e.get("by", {}).get("flow_run") else ""),
                      "reason": e.get("reason", "")} for e in registry.history()],
                    f"no alias moves recorded in {registry.location}")
    elif ns.action == "promote":
        from pipeline.common.device import select_device  # torch: only a blessing needs it

        try:
            event = operations.promote_version(registry, ns.version, params, select_device(params.common.device),
                                               alias=ns.alias, force=ns.force, reason=ns.reason)
        except operations.Refused as refused:
            print(f"tlops registry promote: refused: {refused}", file=sys.stderr)
            return EXIT_REFUSED
        print(f"{event['alias']}: {event['previous']} -> {event['version']} ({event['reason']})")
    else:
        event = operations.rollback(registry, ns.to, ns.reason)
        print(f"champion rolled back: {event['previous']} -> {event['version']} ({event['reason']})")
    return 0


def _print_rows(rows: list[dict], empty: str) -> None:
    if not rows:
        print(empty)
        return
    text = [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]
    widths = {k: max(len(k), *(len(r[k]) for r in text)) for k in text[0]}
    print("  ".join(k.ljust(w) for k, w in widths.items()).rstrip())
    for row in text:
        print("  ".join(row[k].ljust(w) for k, w in widths.items()).rstrip())


def _status(root: Path) -> int:
    changes = dvc_status(root, load_params(root / "params.yaml").orchestrate.command_timeout_s)
    width = max(len(s.name) for s in STAGES)
    for spec in STAGES:
        if spec.name in changes:
            state = "changed: " + _describe_changes(changes[spec.name])
        else:
            state = "up to date"
        print(f"{spec.name:<{width}}  {state}")
    return 0


def _describe_changes(changes: list) -> str:
    parts = []
    for change in changes:
        if isinstance(change, dict):
            for kind, detail in change.items():
                names = ", ".join(f"{k} ({v})" for k, v in detail.items()) if isinstance(detail, dict) else detail
                parts.append(f"{kind}: {names}")
        else:
            parts.append(str(change))
    return "; ".join(parts) or "needs a run"


def _print_outputs(root: Path) -> None:
    print("\noutputs:")
    for name in dvc_stages(root):
        for kind in ("outs", "metrics", "plots"):
            for path in declared_paths(root, name, kind):
                print(f"  {name:<10} {root / path}")


if __name__ == "__main__":
    sys.exit(main())
