"""The ``tagging-sidecar`` command: run, sink, produce, check-config."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import structlog

from tagging_sidecar import __version__
from tagging_sidecar.config import InputFormat, Settings, load_settings
from tagging_sidecar.errors import ConfigError, SidecarError
from tagging_sidecar.observe.logs import configure_logging
from tagging_sidecar.settings_doc import help_text

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

_log = structlog.get_logger("tagging_sidecar.cli")


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print("invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _stop_on_signals(event: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        if event.is_set():
            return
        _log.info("signal received, draining", signal=signal.Signals(signum).name)
        event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_run(_args: argparse.Namespace) -> int:
    """Run the sidecar until SIGTERM/SIGINT."""
    settings = _settings_or_exit()
    configure_logging(settings.log.format, settings.log.level)
    stop = threading.Event()
    _stop_on_signals(stop)
    if settings.processes > 1:
        from tagging_sidecar.supervisor import run_processes

        return run_processes(settings, stop)
    from tagging_sidecar.app import Sidecar
    from tagging_sidecar.runtime import tune_process

    tune_process()
    try:
        Sidecar(settings, stop_event=stop).run()
    except SidecarError as exc:
        _log.error("sidecar failed", error=str(exc))
        return EXIT_FAILED
    return EXIT_OK


def cmd_check_config(_args: argparse.Namespace) -> int:
    """Print the effective configuration with secrets masked."""
    settings = _settings_or_exit()
    print(json.dumps(settings.masked(), indent=2, sort_keys=True))
    return EXIT_OK


def cmd_sink(args: argparse.Namespace) -> int:
    """Run the reference Havilah server until SIGTERM/SIGINT."""
    from tagging_sidecar.sink import Faults, ServerTls, SinkServer

    configure_logging(args.log_format, "INFO")
    tls = None
    if args.tls_cert is not None:
        tls = ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca)
    faults = Faults(
        fail_first=args.fail_first,
        fail_code=grpc.StatusCode[args.fail_code],
        delay=args.delay,
        hang=args.hang,
        reject_ids=set(filter(None, args.reject_ids.split(","))),
        single_only=args.single_only,
    )
    sink = SinkServer(args.listen, record_path=args.record, faults=faults, tls=tls)
    port = sink.start()
    host = args.listen.rsplit(":", 1)[0]
    security = "plaintext" if tls is None else "mtls" if tls.mutual else "tls"
    _log.info(
        "sink listening",
        address=f"{host}:{port}",
        security=security,
        record=str(args.record or ""),
    )
    if args.port_file:
        args.port_file.write_text(f"{port}\n")
    stop = threading.Event()
    _stop_on_signals(stop)
    while not stop.wait(args.summary_interval):
        _log.info("sink summary", **sink.summary())
    sink.stop()
    _log.info("sink stopped", **sink.summary())
    return EXIT_OK


def cmd_produce(args: argparse.Namespace) -> int:
    """Produce demo records."""
    from tagging_sidecar.produce import ensure_topic, produce

    configure_logging(args.log_format, "INFO")
    config = {"bootstrap.servers": args.bootstrap}
    if args.partitions:
        ensure_topic(config, args.topic, args.partitions)

    def progress(done: int) -> None:
        if done % 10000 == 0 or done == args.count:
            _log.info("produced", records=done, of=args.count)

    ids = produce(
        config,
        args.topic,
        args.count,
        rate=args.rate,
        fmt=InputFormat(args.format),
        run_id=args.run_id,
        progress=progress,
    )
    if args.ids_file:
        args.ids_file.write_text("".join(f"{i}\n" for i in ids))
    return EXIT_OK


def _check_sink_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("sink: --tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("sink: --tls-client-ca needs --tls-cert and --tls-key")
    for flag in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            parser.error(f"sink: --{flag.replace('_', '-')} {path} is not a readable file")


def _add_sink(sub: Any) -> None:
    """The ``sink`` subcommand: the reference Havilah server."""
    sink = sub.add_parser("sink", help="run the reference Havilah gRPC server")
    sink.add_argument("--listen", default="127.0.0.1:50051", help="host:port (port 0: any)")
    sink.add_argument("--record", type=Path, help="append every received id to this file")
    sink.add_argument("--port-file", type=Path, help="write the bound port to this file")
    sink.add_argument("--summary-interval", type=float, default=5.0, help="seconds")
    sink.add_argument("--fail-first", type=int, default=0, help="fail the first N calls")
    sink.add_argument(
        "--fail-code",
        default="UNAVAILABLE",
        choices=[c.name for c in grpc.StatusCode],
        help="status of the failed calls",
    )
    sink.add_argument("--delay", type=float, default=0.0, help="seconds to wait per call")
    sink.add_argument("--hang", action="store_true", help="never answer (until the deadline)")
    sink.add_argument("--reject-ids", default="", help="comma-separated ids to reject")
    sink.add_argument(
        "--single-only", action="store_true", help="answer StreamMetricBatch with UNIMPLEMENTED"
    )
    sink.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])
    sink.add_argument("--tls-cert", type=Path, help="serve TLS with this PEM certificate chain")
    sink.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    sink.add_argument(
        "--tls-client-ca",
        type=Path,
        help="require client certificates signed by this PEM CA (mutual TLS)",
    )
    sink.set_defaults(func=cmd_sink, check=_check_sink_args)


def _add_produce(sub: Any) -> None:
    """The ``produce`` subcommand: demo records."""
    produce = sub.add_parser("produce", help="produce demo Tagging records")
    produce.add_argument(
        "--bootstrap",
        default=os.environ.get("TAGGING_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    )
    produce.add_argument("--topic", default="tagging")
    produce.add_argument("--count", type=int, default=1000)
    produce.add_argument("--rate", type=float, default=0.0, help="records per second (0: max)")
    produce.add_argument("--format", default="protobuf", choices=[f.value for f in InputFormat])
    produce.add_argument("--partitions", type=int, default=0, help="create the topic if missing")
    produce.add_argument("--run-id", default=None, help="id prefix (default: random)")
    produce.add_argument("--ids-file", type=Path, help="write the produced ids here")
    produce.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])
    produce.set_defaults(func=cmd_produce)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tagging-sidecar",
        description="Forward Kafka records to a Havilah gRPC service. "
        "Configured by TAGGING_* environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    reference = help_text()
    sub.add_parser(
        "run",
        help="run the sidecar",
        description="Run the sidecar until SIGTERM/SIGINT; it drains, commits and exits 0.",
        epilog=reference,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).set_defaults(func=cmd_run)
    sub.add_parser(
        "check-config",
        help="validate the settings and print them, secrets masked",
        description="Validate the settings and print them with secrets masked; exit 2 if they "
        "are invalid.",
        epilog=reference,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).set_defaults(func=cmd_check_config)

    _add_sink(sub)
    _add_produce(sub)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tagging-sidecar`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check = getattr(args, "check", None)
    if check is not None:
        check(parser, args)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
