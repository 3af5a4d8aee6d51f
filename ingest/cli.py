"""CLI: ``ingest run``, ``ingest status`` and ``ingest fake-server``.

Parses flags over a TOML config, runs the pipeline, prints the summary and
maps the outcome to an exit code (the README lists them). Ctrl-C or SIGTERM
asks the run to stop gracefully; a second one exits at once, which the
checkpoint survives.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import logging
import os
import signal
import sys
import traceback
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import orjson

from ingest.conclude import EXIT_INTERRUPTED
from ingest.config import (
    API_KEY_ENV,
    AUTO,
    DEFAULT_BASE_URL,
    SETTING_NAMES,
    build_config,
    load_toml,
    parse_size,
)
from ingest.errors import ConfigError, IngestError
from ingest.redact import RedactFilter, redact

if TYPE_CHECKING:
    from ingest.report import Summary

# Each subcommand imports what only it uses (the pipeline, verify, status) when it
# runs: `ingest run` on a small file is mostly start-up, and they cost it ~10 ms.

log = logging.getLogger("ingest")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _auto(kind: type[int] | type[float]) -> Any:
    """An argparse type: a number of ``kind``, or ``auto``."""

    def parse(text: str) -> int | float | str:
        if text.strip().lower() == AUTO:
            return AUTO
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number or auto: {text!r}") from None

    return parse


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error still gives ``--json`` its one object on stdout."""

    def __init__(self, *args: Any, json_wanted: bool = False, **kwargs: Any) -> None:
        # No abbreviations: `--jso` would pass for --json unseen by the usage-error path.
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self.json_wanted = json_wanted

    def error(self, message: str) -> NoReturn:
        if self.json_wanted:
            self.print_usage(sys.stderr)
            text = f"{self.prog}: error: {message}"
            sys.stderr.write(text + "\n")
            _print_failed(ConfigError(text))
            sys.exit(ConfigError.exit_code)
        super().error(message)


def _print_failed(exc: IngestError, api_key: str = "") -> None:
    """The --json object of a run that failed before it had a summary."""
    failed = {"status": "failed", "exit_code": exc.exit_code, "message": redact(str(exc), api_key)}
    sys.stdout.buffer.write(orjson.dumps(failed) + b"\n")
    sys.stdout.flush()


def _parser(*, json_wanted: bool = False) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ingest",
        json_wanted=json_wanted,
        description="Upload JSONL records into an Arize dataset: fast, resumable, every row once.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="upload a file (re-run the same command to resume)",
        json_wanted=json_wanted,
        description=f"Upload JSONL into a dataset. The API key comes from ${API_KEY_ENV}.",
    )
    run.add_argument("config", nargs="?", help="TOML config; flags override its settings")
    run.add_argument("--input", help="JSONL file, .gz, or - for stdin")
    run.add_argument("--dataset-id", help="the dataset to append to")
    run.add_argument("--dataset-version-id", help="a version of it (default: the latest)")
    run.add_argument("--base-url", help=f"API base URL (default {DEFAULT_BASE_URL})")
    run.add_argument("--checkpoint", help="journal path (default: <input>.ingest-<tag>.ckpt)")
    run.add_argument("--rejects", help="rejected lines (default: beside the checkpoint)")
    run.add_argument("--batch-rows", type=int, help="rows per request, 1..1000 (default 500)")
    run.add_argument("--batch-bytes", type=_size, help="body bytes per request (default 4MiB)")
    run.add_argument(
        "--concurrency",
        type=_auto(int),
        metavar="N|auto",
        help="requests in flight, 1..256 (default auto: follows the latency, up to 128)",
    )
    run.add_argument(
        "--rate",
        type=_auto(float),
        metavar="R|auto",
        help="requests per second, a hard cap; 0 = no limit "
        "(default auto: found from the server's 429s)",
    )
    run.add_argument("--request-timeout", type=float, help="seconds per request (default 60)")
    run.add_argument("--max-attempts", type=int, help="tries per batch, 429s aside (default 10)")
    run.add_argument("--max-retry-seconds", type=float, help="retry time per batch (default 600)")
    run.add_argument(
        "--restart",
        action="store_true",
        default=None,
        help="start over when the checkpoint is of another input or dataset (old kept as .bak)",
    )
    run.add_argument(
        "--key-field-name",
        metavar="NAME",
        help="the field each row's key is added as (default ingest_key)",
    )
    run.add_argument(
        "--key-from",
        metavar="FIELD",
        help="use this field of the rows (unique, a string or integer) as their key",
    )
    run.add_argument(
        "--no-key",
        action="store_true",
        default=None,
        help="add no key field: delivery is then at-least-once (see the README's guarantees)",
    )
    run.add_argument(
        "--settle-lag",
        type=float,
        metavar="S",
        help="seconds a commit may take to show in a search (default 2)",
    )
    run.add_argument(
        "--allow-insecure-http",
        action="store_true",
        default=None,
        help="allow a plain http:// --base-url beyond loopback (the key travels unencrypted)",
    )
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    _verbosity(run)

    _verify_parser(sub, json_wanted)

    status = sub.add_parser(
        "status", help="show what a checkpoint has done", json_wanted=json_wanted
    )
    status.add_argument("--checkpoint", required=True, help="journal path")
    status.add_argument("--json", action="store_true", help="print as one JSON object")

    sub.add_parser(
        "fake-server",
        help="run the Arize-compatible fake server (see ingest fake-server --help)",
        add_help=False,
    )
    return parser


# The run's flags that say which input, dataset and keys verify checks, and how it asks.
_VERIFY_FLAGS = (
    "input",
    "dataset_id",
    "dataset_version_id",
    "base_url",
    "checkpoint",
    "rejects",
    "batch_rows",
    "batch_bytes",
    "rate",
    "request_timeout",
    "max_attempts",
    "max_retry_seconds",
    "key_field_name",
    "settle_lag",
    "allow_insecure_http",
)


def _verify_parser(sub: Any, json_wanted: bool) -> None:
    verify = sub.add_parser(
        "verify",
        help="check that the dataset holds each row of the input once (--repair: make it so)",
        json_wanted=json_wanted,
        description="Read the dataset back and compare it with the input, by row keys. "
        "Exit 0 when each row is there once, 7 when not.",
    )
    run_flags = {a.dest: a for a in _parser_of(sub, "run")._actions}
    for name in (*_VERIFY_FLAGS, "config", "no_key"):
        action = run_flags[name]
        flags = action.option_strings or [action.dest]
        kwargs: dict[str, Any] = {"help": action.help, "default": action.default}
        if name == "no_key":  # accepted only to say why it cannot be
            kwargs["help"] = "refused: verify finds rows by their keys"
        if action.nargs == 0:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=action.type, metavar=action.metavar, nargs=action.nargs)
        verify.add_argument(*flags, **kwargs)
    verify.add_argument(
        "--repair", action="store_true", help="delete extra copies and send missing rows"
    )
    verify.add_argument("--yes", action="store_true", help="repair without asking")
    verify.add_argument("--json", action="store_true", help="print the report as one JSON object")
    _verbosity(verify)


def _parser_of(sub: Any, name: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.choices[name]
    return parser


def _verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help="log every retry")
    group.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fake-server"]:
        from ingest.fake import main as fake_main

        return fake_main(argv[1:])
    args = _parser(json_wanted="--json" in argv).parse_args(argv)
    try:
        if args.command == "verify":
            return _verify(args)
        if args.command == "status":
            from ingest.status import status_command

            return status_command(args)
        return _run(args)
    except BrokenPipeError:
        # stdout went away (`ingest status ... | head`): not an error of ours.
        _silence(sys.stdout)
        return 1


def entry_point() -> NoReturn:
    """The ``ingest`` command and ``python -m ingest``: ``main``, then exit with its code."""
    code = main()
    # On its way out the interpreter runs the cyclic collector over every object still
    # alive (modules, classes, functions): ~110 ms after a small run, more than its
    # upload, for memory the process returns to the system anyway. Frozen objects are
    # left out. Nothing else changes: files and the journal are closed by now, atexit
    # handlers (logging's flush) still run, and __del__ was never promised at exit.
    gc.freeze()
    sys.exit(code)


def _logging(args: argparse.Namespace) -> str:
    """Log to stderr at the asked level, the key redacted; return the key."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="ingest: %(message)s", stream=sys.stderr)
    # Whatever a server echoes back, the key never reaches the terminal or the --json.
    api_key = os.environ.get(API_KEY_ENV, "").strip()
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactFilter(api_key))
    return api_key


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags give (None: not given), by the names RunConfig has."""
    return {name: getattr(args, name) for name in SETTING_NAMES if hasattr(args, name)}


def _run(args: argparse.Namespace) -> int:
    api_key = _logging(args)
    overrides = _overrides(args)
    try:
        toml = load_toml(args.config) if args.config else {}
        config = build_config(toml, overrides, source=args.config or "flags")
        summary = anyio.run(_upload_with_signals, config, args.json, backend="asyncio")
    except IngestError as exc:
        print(f"ingest: error: {redact(str(exc), api_key)}", file=sys.stderr)  # noqa: T201
        if exc.summary is not None:
            _print_summary(exc.summary, args.json, api_key)
        elif args.json:  # a scheduler still gets one object on stdout
            _print_failed(exc, api_key)
        return exc.exit_code
    except Exception:
        sys.stderr.write(redact(traceback.format_exc(), api_key))
        print("ingest: unexpected error (a bug: please report it)", file=sys.stderr)  # noqa: T201
        if args.json:  # a scheduler still gets one object on stdout
            _print_failed(IngestError("unexpected error (a bug: please report it)"), api_key)
        return 1
    _print_summary(summary, args.json, api_key)
    return summary.exit_code


def _print_summary(summary: Summary, as_json: bool, api_key: str) -> None:
    summary = summary.redacted(api_key)
    try:
        if as_json:
            sys.stdout.buffer.write(summary.to_json() + b"\n")
            sys.stdout.flush()
        else:
            print(summary.to_text())  # noqa: T201
    except OSError as exc:
        # The run's outcome (and its exit code) stands when nobody can read it: a pipe
        # closed early, or a terminal hung up (an ssh disconnect) after the SIGHUP.
        if exc.errno not in (errno.EPIPE, errno.EIO):
            raise
        _silence(sys.stdout, sys.stderr)


def _silence(*streams: Any) -> None:
    """Point ``streams`` at /dev/null, so the interpreter's flush at exit cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in streams:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())


async def _upload_with_signals(config: Any, as_json: bool) -> Summary:
    from ingest.pipeline import upload

    stop = anyio.Event()
    outcome: Summary | BaseException
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_signals, stop, as_json)
        try:
            outcome = await upload(config, stop=stop, progress=True)
        except Exception as exc:  # raised below, outside the group, so it is not wrapped
            outcome = exc
        tg.cancel_scope.cancel()
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


# SIGHUP: the terminal went away (an ssh disconnect); wind down as for SIGTERM.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_signals() -> list[signal.Signals]:
    """The stop signals, less those the parent set to be ignored (``nohup`` ignores SIGHUP)."""
    return [s for s in _STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]


async def _watch_signals(stop: anyio.Event, as_json: bool) -> None:
    with anyio.open_signal_receiver(*_stop_signals()) as signals:
        async for signum in signals:
            if stop.is_set():
                # The journal is fsynced record by record and a torn line is dropped on
                # load, so leaving without cleanup still resumes correctly.
                message = "stopped at once; re-run the same command to resume"
                sys.stderr.write(f"ingest: {message}\n")
                if as_json:  # a scheduler still gets its one object on stdout
                    out = {"status": "interrupted", "exit_code": EXIT_INTERRUPTED}
                    with contextlib.suppress(OSError):
                        os.write(1, orjson.dumps({**out, "message": message}) + b"\n")
                os._exit(EXIT_INTERRUPTED)
            log.warning(
                "%s received: finishing requests in flight (press Ctrl-C again to stop at once)",
                signal.Signals(signum).name,
            )
            stop.set()


def _verify(args: argparse.Namespace) -> int:
    from ingest import verify  # the function (ingest/verify.py shares its name)
    from ingest.verify_report import ask_on_terminal

    api_key = _logging(args)
    try:
        if args.no_key:
            raise ConfigError(
                "verify finds rows by their keys, and a --no-key upload gives them none: "
                "drop --no-key (rows uploaded without keys cannot be verified)"
            )
        confirm = None
        if args.repair and not args.yes:
            if not sys.stdin.isatty():
                raise ConfigError(
                    "--repair deletes examples, and there is no terminal to ask on: "
                    "pass --yes to repair without asking"
                )
            confirm = ask_on_terminal
        toml = load_toml(args.config) if args.config else {}
        overrides = _overrides(args)
        config = build_config(toml, overrides, source=args.config or "flags")
        report = anyio.run(
            partial(verify, config, api_key=api_key, repair=args.repair, confirm=confirm),
            backend="asyncio",
        )
    except IngestError as exc:
        print(f"ingest: error: {redact(str(exc), api_key)}", file=sys.stderr)  # noqa: T201
        if args.json:
            _print_failed(exc, api_key)
        return exc.exit_code
    except KeyboardInterrupt:  # nothing to resume: a repair stopped halfway is verified again
        print("ingest: interrupted", file=sys.stderr)  # noqa: T201
        return EXIT_INTERRUPTED
    except Exception:
        sys.stderr.write(redact(traceback.format_exc(), api_key))
        print("ingest: unexpected error (a bug: please report it)", file=sys.stderr)  # noqa: T201
        if args.json:
            _print_failed(IngestError("unexpected error (a bug: please report it)"), api_key)
        return 1
    if args.json:
        sys.stdout.buffer.write(report.to_json() + b"\n")
    else:
        print(report.to_text())  # noqa: T201
    return report.exit_code
