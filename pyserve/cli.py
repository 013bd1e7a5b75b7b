"""The `pyserve` command: start and stop a server, with torchserve's flags."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pyserve import __version__, control, kserve_runtime
from pyserve.archiver import FORMATS, RUNTIMES
from pyserve.config import ConfigError, Settings, load_settings, model_list
from pyserve.model_snapshot import read_snapshot
from pyserve.names import InvalidModelName, check_model_name


def _start_parser(commands) -> None:
    start = commands.add_parser(
        "start",
        help="start the server (in the background unless --foreground)",
        description="Start serving models. Flags match `torchserve --start`. In the "
                    "background (the default) it prints the server's log until the server is "
                    "ready, then `Model server started.`, where it listens and which models it "
                    "serves; a startup model that cannot be loaded is left out, with the reason "
                    "on stderr, and the server serves the others.",
    )
    _start_flags(start)


def _kserve_parser(commands) -> None:
    kserve = commands.add_parser(
        "kserve",
        help="run as KServe's serving runtime (a container's command: in the foreground)",
        description="Serve TorchServe's KServe layout as KServe runs a predictor: "
                    f"{kserve_runtime.CONFIG_FILE} and {kserve_runtime.MODEL_STORE} by "
                    f"default, KServe v1 and v2 on 0.0.0.0:{kserve_runtime.HTTP_PORT}, gRPC "
                    f"(TorchServe's and the Open Inference Protocol) on "
                    f"0.0.0.0:{kserve_runtime.GRPC_PORT}, in the foreground. Takes `pyserve "
                    "start`'s flags; PROTOCOL_VERSION must be v1, v2 or grpc-v2.",
    )
    _start_flags(kserve)
    kserve.set_defaults(model_store=kserve_runtime.MODEL_STORE, ts_config=kserve_runtime.CONFIG_FILE)


def _start_flags(start: argparse.ArgumentParser) -> None:
    start.add_argument("--model-store", metavar="DIR",
                       help="folder holding model archives (.mar, .tar.gz) or model folders; "
                            "overrides model_store in the config file")
    start.add_argument("--models", nargs="+", metavar="MODEL",
                       help="models to load at startup: NAME=ARCHIVE or ARCHIVE, separated by "
                            "spaces or commas (a.mar,b.mar), or 'all' for everything in the "
                            "model store; overrides load_models")
    start.add_argument("--ts-config", metavar="FILE",
                       help="TorchServe config.properties to read (env TS_CONFIG_FILE wins)")
    start.add_argument("--foreground", action="store_true",
                       help="stay attached to the terminal, logging there")
    start.add_argument("--ncs", "--no-config-snapshots", dest="ncs", action="store_true",
                       help="accepted for torchserve compatibility; pyserve writes no snapshots")
    start.add_argument("--disable-token-auth", "--dt", dest="disable_token_auth",
                       action="store_true", help="turn token authorization off")
    start.add_argument("--enable-model-api", action="store_true",
                       help="allow registering and unregistering models through the "
                            "management API")
    start.add_argument("--log-dir", metavar="DIR",
                       help="where a background server writes its log files: TorchServe's "
                            "ts_log.log, model_log.log, access_log.log and pyserve.log, its "
                            "console (default: $LOG_LOCATION or ./logs)")
    ignored = start.add_argument_group(
        "accepted for torchserve compatibility, without effect",
        "pyserve has no JVM, workflows or plugins; these flags are accepted so that "
        "existing torchserve command lines keep working.")
    ignored.add_argument("--log-config", metavar="FILE", help="log4j2 configuration (JVM only)")
    ignored.add_argument("--cpp-log-config", metavar="FILE", help="C++ backend log configuration")
    ignored.add_argument("--workflow-store", metavar="DIR", help="workflow archives (.war)")
    ignored.add_argument("--plugins-path", "--ppath", metavar="DIR", help="Java plugins")


def _archive_parser(commands) -> None:
    archive = commands.add_parser(
        "archive",
        help="make a model archive (.mar), as torch-model-archiver does",
        description="Package a model and its handler into an archive. Flags and output "
                    "match torch-model-archiver 0.12.0.",
    )
    archive.add_argument("--model-name", required=True,
                         help="model name; the archive is written as NAME.mar")
    archive.add_argument("-v", "--version", required=True, help="model version, e.g. 1.0")
    archive.add_argument("--handler", required=True,
                         help="handler file (file.py, file.py:function) or a built-in name "
                              "(base_handler, image_classifier, image_segmenter, "
                              "object_detector, text_classifier)")
    archive.add_argument("--serialized-file",
                         help="weights: a state_dict (.pt/.pth) for eager models, or a "
                              "TorchScript file")
    archive.add_argument("--model-file",
                         help="Python file defining the model class (eager models)")
    archive.add_argument("--extra-files",
                         help="comma-separated files, folders or globs to add to the archive")
    archive.add_argument("--runtime", default="python", choices=RUNTIMES,
                         help="runtime recorded in the manifest (default: python)")
    archive.add_argument("--export-path", default=".",
                         help="folder to write the archive into (default: current folder)")
    archive.add_argument("--archive-format", default="default",
                         choices=list(FORMATS),
                         help="default: zip .mar; zip-store: uncompressed .mar; tgz: .tar.gz; "
                              "no-archive: a plain folder")
    archive.add_argument("-f", "--force", action="store_true",
                         help="overwrite an existing archive of the same name")
    archive.add_argument("-r", "--requirements-file",
                         help="requirements.txt with the model's own Python dependencies")
    archive.add_argument("-c", "--config-file",
                         help="model-config yaml (batchSize, minWorkers, ...)")


def _archive(args: argparse.Namespace) -> int:
    from pyserve.archiver import ArchiverError, ArchiveSpec, create_archive

    fields = {name: getattr(args, name) for name in ArchiveSpec.__dataclass_fields__}
    try:
        path = create_archive(ArchiveSpec(**fields))
    except (ArchiverError, OSError) as error:
        print(f"pyserve archive: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def _settings(args: argparse.Namespace):
    config_file = os.environ.get("TS_CONFIG_FILE") or args.ts_config
    return load_settings(
        config_file,
        model_store=args.model_store,
        load_models=model_list(args.models) if args.models else None,
        disable_token_authorization=True if args.disable_token_auth else None,
        enable_model_api=True if args.enable_model_api else None,
    )


def _kserve(args: argparse.Namespace) -> int:
    try:
        kserve_runtime.check_protocol_version(os.environ)
    except ConfigError as error:
        print(f"pyserve: {error}", file=sys.stderr)
        return 2
    args.foreground = True  # a container's main process
    return _start(args, [], adjust=kserve_runtime.kserve_settings)


def _start(args: argparse.Namespace, argv: list[str],
           adjust: Callable[[Settings], Settings] | None = None) -> int:
    """`adjust`: what a command changes in the settings read (`pyserve kserve`: the listeners)."""
    try:
        settings = _settings(args)
        if adjust is not None:
            settings = adjust(settings)
        if settings.model_snapshot is not None:
            read_snapshot(settings.model_snapshot, settings.model_store)
    except ConfigError as error:
        print(f"pyserve: {error}", file=sys.stderr)
        return 2
    if settings.model_store is not None and not Path(settings.model_store).is_dir():
        print(f"pyserve: model store {settings.model_store} is not a folder", file=sys.stderr)
        return 2
    try:
        for entry in settings.load_models:  # NAME=ARCHIVE; names from archives are checked at load
            if "=" in entry:
                check_model_name(entry.split("=", 1)[0])
    except InvalidModelName as error:
        print(f"pyserve: {error.message}", file=sys.stderr)
        return 2
    if not args.foreground:
        if control.running_pid() is not None:
            print(control.ALREADY_RUNNING, file=sys.stderr)
            return 1
        log_dir = Path(args.log_dir or os.environ.get("LOG_LOCATION") or "logs")
        os.environ["LOG_LOCATION"] = str(log_dir)  # the server's log files land beside pyserve.log
        code, report = control.start_background(argv, log_dir, sys.stdout.buffer)
        for line in report.splitlines():
            failed = code != 0 or line.startswith("warning:")
            print(line, file=sys.stderr if failed else sys.stdout)
        return code

    refused = control.claim_pid_file()
    if refused:
        print(refused, file=sys.stderr)
        control.report_ready(f"error: {refused}")
        return 1
    from pyserve.server import run  # the server's imports are not needed to stop one

    try:
        return run(settings, on_ready=control.announce_ready)
    finally:
        control.release_pid_file()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyserve",
        description="A TorchServe-compatible model server with a C++ batching core.",
        epilog="torchserve's spelling works too: `pyserve --start [FLAGS]` is `pyserve start "
               "[FLAGS]`, and `pyserve --stop` is `pyserve stop`.",
    )
    parser.add_argument("-v", "--version", action="version", version=f"pyserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _start_parser(commands)
    _kserve_parser(commands)
    _archive_parser(commands)
    from pyserve.bench.command import add_bench_parser

    add_bench_parser(commands)
    from pyserve.ray.command import add_ray_parser

    add_ray_parser(commands)
    stop = commands.add_parser("stop", help="stop the server started with `pyserve start`",
                               description="Stop the running server and wait until it and "
                                           "its workers are gone.")
    stop.add_argument("--foreground", action="store_true",
                      help="accepted for torchserve compatibility; stop always waits")
    return parser


# torchserve's flags for what pyserve has commands for; --stop first, as torchserve checks it first
TORCHSERVE_COMMANDS = {"--stop": "stop", "--start": "start"}


def as_command(argv: list[str]) -> list[str]:
    """`--start ...` or `--stop` (anywhere in torchserve's flags, before any command) as
    pyserve's `start ...` or `stop`."""
    if argv and argv[0].startswith("-"):
        for flag, command in TORCHSERVE_COMMANDS.items():
            if flag in argv:
                return [command, *(word for word in argv if word != flag)]
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = as_command(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "start":
        return _start(args, [a for a in argv[1:] if a != "--foreground"])
    if args.command == "kserve":
        return _kserve(args)
    if args.command == "archive":
        return _archive(args)
    if args.command in ("bench", "ray"):
        return args.handler(args)
    if args.command == "stop":
        message = control.stop()
        print(message)
        return 0
    return 2
