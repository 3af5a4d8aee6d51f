"""Caller: makes one request until it succeeds, is refused, or its retry budget runs out.

Takes a request (a coroutine function answering a ``Reply``) and what it is for;
gives back the reply that ends the retries, or raises. Every request of a run
goes through one ``RetryingCaller``: the sender's appends and the preflight's
GET, settling's searches and deletes, so all of them share the retry rules,
the ``Pacer`` (whose turn each attempt waits for, and which hears how each one
went: status, round trip, ``Retry-After``) and the stop: after a stop request no
new request starts, and a retry waiting its turn is abandoned (``Abandoned``).
Time is read and waited through the pacer's one ``Clock``. The preflight alone
bounds a host that cannot be reached tighter (``Unreachable``).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import anyio

from ingest.client import Reply
from ingest.clock import sleep_unless
from ingest.errors import (
    AuthError,
    BaseUrlError,
    DatasetNotFoundError,
    DeliveryError,
    RetriesExhaustedError,
)
from ingest.pacing import Attempt, FixedPacer, Pacer
from ingest.report import RunStats
from ingest.retry import (
    ROW_ERROR_STATUSES,
    Action,
    RetryPolicy,
    classify,
    parse_retry_after,
)

log = logging.getLogger("ingest")


class Abandoned(Exception):
    """A stop was asked for while a batch waited to be sent again: leave it."""


class Unreachable(Exception):
    """No connection could be made, attempt after attempt, within the tighter bounds."""

    def __init__(self, cause: str, attempts: int, elapsed: float) -> None:
        super().__init__(cause)
        self.cause = cause
        self.attempts = attempts
        self.elapsed = elapsed


class ServerErrorEveryTime(Exception):
    """A one-row batch got a row error (HTTP 500) on every attempt its budget allowed."""

    def __init__(self, reply: Reply, attempts: int) -> None:
        super().__init__(reply.problem())
        self.reply = reply
        self.attempts = attempts


class UnknownOutcome(Exception):
    """A request was sent and its answer hides whether it was committed (5xx, timeout, ...)."""

    def __init__(self, cause: str, reply: Reply | None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.status = reply.status if reply is not None else None
        self.problem = reply.problem() if reply is not None else cause


class RetryingCaller:
    """Makes requests within the retry bounds; one per run, shared by every worker.

    caller = RetryingCaller(policy=policy, stats=stats, describe=describe, pacer=pacer,
                            stopping=stop, base_url="https://api.arize.com")
    reply = await caller.call(client.get_dataset, "the preflight GET of the dataset")
    """

    def __init__(
        self,
        *,
        policy: RetryPolicy,
        stats: RunStats,
        describe: Callable[[Action, Reply], str],
        pacer: Pacer | None = None,
        stopping: anyio.Event | None = None,
        base_url: str = "",
    ) -> None:
        self._policy = policy
        self._base_url = base_url  # names the API in a TLS failure
        self._stats = stats
        self._describe = describe
        # Alone (the preflight): one request at a time, no rate, the classic 429 pause.
        self.pacer = pacer or FixedPacer(rate=None, concurrency=1, policy=policy)
        self.stopping = stopping or anyio.Event()
        self._clock = self.pacer.clock.now

    async def call(
        self,
        request: Callable[[], Awaitable[Reply]],
        what: str,
        *,
        on_first_send: Callable[[], Awaitable[None]] | None = None,
        on_unknown: Callable[[str], Awaitable[None]] | None = None,
        split_after_500s: int | None = None,
        reject_row_errors: bool = False,
        settle_unknown: bool = False,
        bound_unreachable: bool = False,
    ) -> Reply:
        """Make ``request`` until it answers 2xx or refuses the rows, within the retry bounds.

        With ``split_after_500s``, that many HTTP 500s in a row return the reply so the
        caller halves the batch: Arize answers 500 to bodies it finds too large.
        ``on_first_send`` is awaited once, after the waits a stop cuts short and just
        before the first request: a batch journaled as sending is always sent, so a
        stop never leaves one in flight that was not.
        With ``reject_row_errors``, bounds that run out after a row error (HTTP 500)
        on every attempt raise ``ServerErrorEveryTime``, so the caller rejects the row.
        With ``settle_unknown``, an unknown outcome is not retried: it raises
        ``UnknownOutcome`` (after ``on_unknown``), so the caller looks the rows up first.
        With ``bound_unreachable``, connections that fail in a row (no such host name,
        nothing listening) raise ``Unreachable`` once ``RetryPolicy.unreachable()``
        runs out: the preflight's way to fail fast on a mistyped base URL.

        Raises ``AuthError``, ``DatasetNotFoundError`` or ``DeliveryError`` on a refusal
        retrying cannot fix, and ``RetriesExhaustedError`` when the bounds run out.
        """
        attempts = throttled = fives = row_errors = 0
        down, down_since = 0, 0.0  # connections failed in a row, since when
        last_row_error: Reply | None = None
        after: float | None = None  # what the last 429 asked for
        started = self._clock()
        # A retry counts once the request really goes out. (Resent unknown outcomes are
        # counted by the journal, which sees every run's.)
        owed_retry: str | None = None
        while True:
            if (turn := await self.pacer.turn(self.stopping)) is None:
                raise Abandoned
            gone = False
            try:
                if on_first_send is not None:
                    await on_first_send()  # durable before the POST; no stop check after it
                    on_first_send = None
                if owed_retry is not None:
                    self._stats.retries[retry_kind(owed_retry)] += 1
                owed_retry = None
                self._stats.requests += 1
                sent = self._clock()  # after the journal's fsync: the round trip is the request's
                self.pacer.went(turn, sent)
                gone = True
                reply, action, cause = await self._attempt(request)
            except BaseException:
                if not gone:
                    self.pacer.went(turn, self._clock())
                self.pacer.forfeit()  # no outcome to learn from (a fatal error, a cancel)
                raise
            if action is Action.RATE_LIMITED:
                throttled += 1
                after = parse_retry_after(reply.retry_after if reply else None)
            elif reply is not None and reply.status == 503:
                after = parse_retry_after(reply.retry_after)  # an overloaded server may ask too
            else:
                after = None
            status = reply.status if reply is not None else None
            hint = self.pacer.record(Attempt(status, sent, self._clock(), after, throttled))
            if action in (Action.DELIVERED, Action.SPLIT):
                assert reply is not None
                return reply
            if action in (Action.AUTH, Action.NOT_FOUND, Action.FAIL):
                assert reply is not None
                raise self._fatal(action, reply, what)
            # No reply and nothing sent: the host could not be reached at all.
            unreached = reply is None and action is Action.RETRY
            down, down_since = (down + 1, down_since if down else sent) if unreached else (0, 0.0)
            if action is Action.RETRY_UNKNOWN and on_unknown is not None:
                await on_unknown(cause)  # journaled whether or not the rows go again
            if action is Action.RETRY_UNKNOWN and settle_unknown:
                raise UnknownOutcome(cause, reply)
            fives = fives + 1 if reply is not None and reply.status == 500 else 0
            if reply is not None and reply.status in ROW_ERROR_STATUSES:
                row_errors, last_row_error = row_errors + 1, reply
            if split_after_500s is not None and fives >= split_after_500s:
                assert reply is not None
                return reply
            if action is Action.RATE_LIMITED:
                wait = hint  # the pacer's: a shared pause, or this request's next turn
            else:
                attempts += 1
                wait = max(self._policy.backoff(attempts), hint)
                after = None
            elapsed = self._clock() - started
            gives_up = self._policy.gives_up(attempts=attempts, elapsed=elapsed, wait=wait)
            if bound_unreachable and down:
                spent = self._clock() - down_since
                if gives_up or self._policy.unreachable().gives_up(
                    attempts=down, elapsed=spent, wait=wait
                ):
                    raise Unreachable(cause, down, spent)
            if gives_up:
                # 429s are not attempts: a row error on each attempt is the row's doing.
                if reject_row_errors and last_row_error is not None and row_errors == attempts:
                    raise ServerErrorEveryTime(last_row_error, attempts)
                raise RetriesExhaustedError(
                    self._exhausted(what, attempts, throttled, elapsed, cause, wait, after)
                )
            owed_retry = cause
            log.debug("%s: %s; retrying in %.2fs", what, cause, wait)
            if action is not Action.RATE_LIMITED:
                await self._pause(wait)

    def _exhausted(
        self,
        what: str,
        attempts: int,
        throttled: int,
        elapsed: float,
        cause: str,
        wait: float,
        asked: float | None,
    ) -> str:
        """Why retrying ``what`` stops, and what the user can do about it."""
        budget = self._policy.max_seconds
        if asked is not None and elapsed + wait > budget:
            # The server's own Retry-After is what outlasts the budget: say so, in its figure.
            left = max(budget - elapsed, 0.0)
            return (
                f"{what}: the server is throttling (HTTP 429) and asked to wait {_secs(asked)} "
                f"(Retry-After), more than the {_secs(left)} left of the {_secs(budget)} "
                "retry budget (max_retry_seconds): raise --max-retry-seconds, or re-run the same "
                "command later to resume"
            )
        tries = [f"{attempts} attempts"] if attempts else []
        tries += [f"{throttled} requests throttled (HTTP 429)"] if throttled else []
        return (
            f"{what} did not succeed after {' and '.join(tries)} in {elapsed:.0f}s "
            f"(last: {cause}, next wait {wait:.0f}s); re-run the same command to resume"
        )

    @property
    def policy(self) -> RetryPolicy:
        """The retry bounds and backoff every request of the run follows."""
        return self._policy

    def now(self) -> float:
        """The clock the retry budget is measured on."""
        return self._clock()

    async def wait(self, seconds: float) -> None:
        """Wait ``seconds`` unless a stop comes first (then raise ``Abandoned``)."""
        await self._pause(seconds)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``; give up the batch at once if a stop is asked for meanwhile."""
        if await sleep_unless(self.pacer.clock, seconds, self.stopping):
            raise Abandoned

    async def _attempt(
        self, request: Callable[[], Awaitable[Reply]]
    ) -> tuple[Reply | None, Action, str]:
        """One request: its reply, what it calls for, and a cause for the logs."""
        try:
            reply = await request()
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            where = f" with {self._base_url}" if self._base_url else ""
            raise DeliveryError(
                f"TLS failed{where}: {exc}; check --base-url; if a proxy or private CA sits "
                "in between, point SSL_CERT_FILE at its CA certificate (PEM)"
            ) from exc
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # No connection was made, so nothing was sent: a plain retry.
            return None, Action.RETRY, f"connection failed ({_no_connection(exc)})"
        except TimeoutError:
            return None, Action.RETRY_UNKNOWN, "timeout"
        except aiohttp.ClientError as exc:
            return None, Action.RETRY_UNKNOWN, f"connection lost ({exc.__class__.__name__})"
        action = classify(reply.status)
        return reply, action, f"HTTP {reply.status}"

    def _fatal(self, action: Action, reply: Reply, what: str) -> DeliveryError:
        if reply.redirected:
            return BaseUrlError(f"{what}: {reply.redirect()}")
        message = f"{self._describe(action, reply)} (during {what})"
        if action is Action.AUTH:
            return AuthError(message)
        if action is Action.NOT_FOUND:
            return DatasetNotFoundError(message)
        return DeliveryError(message)


def _no_connection(exc: aiohttp.ClientError) -> str:
    """Why no connection was made, in words: no such host name, refused, or the OS's reason."""
    if not isinstance(exc, aiohttp.ClientConnectorError):
        return exc.__class__.__name__  # a connect timeout
    proxy = "the proxy " if isinstance(exc, aiohttp.ClientProxyConnectionError) else ""
    error = exc.os_error
    if isinstance(error, socket.gaierror):
        return f"{proxy}host name {exc.host!r} does not resolve"
    where = f"{proxy}{exc.host}:{exc.port}"
    if isinstance(error, ConnectionRefusedError) or error.errno == errno.ECONNREFUSED:
        return f"{where} refused the connection"
    return f"{where}: {error.strerror or error}"


def _secs(seconds: float) -> str:
    """A duration for a message: whole seconds, or tenths under ten."""
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"


def retry_kind(cause: str) -> str:
    """Group causes for the summary: 429, 5xx, 408, timeout, connection."""
    if cause.startswith("HTTP 5"):
        return "5xx"
    if cause.startswith("HTTP "):
        return cause[5:]
    if cause == "timeout":
        return "timeout"
    return "connection"
