"""`ingest fake-server`: run the fake Arize API until SIGTERM or SIGINT.

On start it prints one line, `listening on http://HOST:PORT`, so that a test or
`make demo` that asked for port 0 learns the port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from ingest.fake.faults import RATE_LIMIT_MODES, Faults
from ingest.fake.server import serve
from ingest.fake.storage import FakeArize


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingest fake-server",
        description="Serve an in-memory, Arize-compatible datasets API for tests and demos.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    add("--port", type=int, required=True, help="port to bind; 0 picks a free one")
    add("--api-key", help="the accepted bearer token (default: $ARIZE_API_KEY)")
    add(
        "--dataset",
        action="append",
        default=[],
        metavar="ID",
        help="pre-create an empty dataset with exactly this id (repeatable)",
    )
    add("--latency", type=float, default=0.0, metavar="S", help="seconds added to each request")
    add("--fail-rate", type=float, default=0.0, metavar="P", help="503 before storing")
    add("--fail-after-commit-rate", type=float, default=0.0, metavar="P", help="503 after storing")
    add("--rate-limit", type=float, metavar="RPS", help="requests/s allowed before 429")
    add(
        "--rate-limit-mode",
        choices=RATE_LIMIT_MODES,
        default="bucket",
        help="token bucket, or fixed one-second windows of the server clock (default: %(default)s)",
    )
    add("--retry-after", type=float, metavar="S", help="Retry-After sent with each 429")
    add("--no-retry-after", action="store_true", help="send every 429 without a Retry-After")
    add(
        "--accept-rows",
        type=int,
        metavar="N",
        help="a dataset takes N rows in all; appends beyond get 429, nothing stored",
    )
    add("--max-body-bytes", type=int, metavar="N", help="larger bodies get HTTP 500")
    add("--refuse-field", metavar="NAME", help="422 for any example with this field")
    add(
        "--drop-after-commit-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="close the connection, unanswered, after storing",
    )
    add(
        "--stall-after-commit-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="answer --stall-seconds late after storing",
    )
    add(
        "--stall-after-commit-at",
        type=int,
        action="append",
        default=[],
        metavar="K",
        help="the K-th POST that stores rows then stalls (repeatable)",
    )
    add(
        "--stall-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="how late a stalled answer comes (default: %(default)s)",
    )
    add(
        "--throttle-storm",
        type=float,
        default=0.0,
        metavar="S",
        help="429 to every request for S seconds from the first POST of examples",
    )
    add(
        "--retry-after-http-date",
        action="store_true",
        help="send Retry-After as an HTTP date rather than seconds",
    )
    add(
        "--outage-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="503 to every request for S seconds, the data kept",
    )
    add(
        "--outage-after-requests",
        type=int,
        metavar="K",
        help="the outage begins at the K-th /v2 request (default: the first)",
    )
    add(
        "--no-search-filters",
        action="store_true",
        help="400 to a search that has a filter, as a server without filters",
    )
    add("--seed", type=int, help="seed for the coin flips of every rate")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the fake server from command-line arguments; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    api_key = args.api_key or os.environ.get("ARIZE_API_KEY")
    if not api_key:
        parser.error("give --api-key or set ARIZE_API_KEY")
    rates = (
        args.fail_rate,
        args.fail_after_commit_rate,
        args.drop_after_commit_rate,
        args.stall_after_commit_rate,
    )
    for rate in rates:
        if not 0.0 <= rate <= 1.0:
            parser.error(f"fail rates are fractions from 0 to 1; got {rate}")
    if args.rate_limit is not None and args.rate_limit <= 0:
        parser.error("--rate-limit must be positive")
    if args.accept_rows is not None and args.accept_rows < 0:
        parser.error("--accept-rows must not be negative")
    counts = [*args.stall_after_commit_at, args.outage_after_requests]
    for count in counts:
        if count is not None and count < 1:
            parser.error(f"commits and requests are counted from 1; got {count}")
    if args.outage_after_requests is not None and not args.outage_seconds:
        parser.error("--outage-after-requests needs --outage-seconds")
    for name in ("stall_seconds", "throttle_storm", "outage_seconds"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    faults = Faults(
        latency=args.latency,
        fail_rate=args.fail_rate,
        fail_after_commit_rate=args.fail_after_commit_rate,
        rate_limit=args.rate_limit,
        rate_limit_mode=args.rate_limit_mode,
        send_retry_after=not args.no_retry_after,
        retry_after=args.retry_after,
        accept_rows=args.accept_rows,
        max_body_bytes=args.max_body_bytes,
        refuse_field=args.refuse_field,
        drop_after_commit_rate=args.drop_after_commit_rate,
        stall_after_commit_rate=args.stall_after_commit_rate,
        stall_after_commit_at=frozenset(args.stall_after_commit_at),
        stall_seconds=args.stall_seconds,
        throttle_storm=args.throttle_storm,
        retry_after_http_date=args.retry_after_http_date,
        outage_seconds=args.outage_seconds,
        outage_after_requests=args.outage_after_requests,
        search_filters=not args.no_search_filters,
        seed=args.seed,
    )
    state = FakeArize(api_key=api_key, faults=faults)
    for dataset_id in args.dataset:
        try:
            state.create_dataset(dataset_id)
        except ValueError as exc:
            parser.error(str(exc))
    asyncio.run(_serve_until_signalled(state, args.host, args.port))
    return 0


async def _serve_until_signalled(state: FakeArize, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(state, host=host, port=port) as url:
        sys.stdout.write(f"listening on {url}\n")
        sys.stdout.flush()
        await stop.wait()
