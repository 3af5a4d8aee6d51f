"""A server's rate limit, simulated: a token bucket or a fixed one-second window.

Used by the pacing tests in virtual time: ``answer(now)`` is the status a request
arriving at ``now`` gets, with the ``Retry-After`` the server would send (whole
seconds, as HTTP's delay-seconds are: a window's last tenth asks for a second).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Limit:
    rate: float
    mode: str = "bucket"  # or "window"
    retry_after: bool = True
    tokens: float = field(init=False)
    last: float = 0.0
    window: int = -1
    used: int = 0
    accepted: list[float] = field(default_factory=list)
    refused: int = 0
    refused_at: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = self.rate

    def answer(self, now: float) -> tuple[int, float | None]:
        if self.mode == "bucket":
            self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
            self.last = now
            ok, wait = self.tokens >= 1, (1 - self.tokens) / self.rate
            if ok:
                self.tokens -= 1
        else:
            if math.floor(now) != self.window:
                self.window, self.used = math.floor(now), 0
            ok, wait = self.used < self.rate, self.window + 1 - now
            if ok:
                self.used += 1
        if ok:
            self.accepted.append(now)
            return 200, None
        self.refused += 1
        self.refused_at.append(now)
        # As the fake server and HTTP's delay-seconds: whole seconds, rounded up, at least 1.
        return 429, (float(max(1, math.ceil(wait))) if self.retry_after else None)

    def sustained(self, since: float, until: float) -> float:
        """Accepted requests a second between ``since`` and ``until``, as a share of the limit."""
        n = sum(since <= t < until for t in self.accepted)
        return n / (until - since) / self.rate

    def refused_share(self) -> float:
        return self.refused / (self.refused + len(self.accepted))

    def throttle_episodes(self, since: float) -> int:
        """Runs of 429s (each a second or more after the one before) from ``since`` on."""
        times = [t for t in self.refused_at if t >= since]
        return sum(1 for i, t in enumerate(times) if i == 0 or t - times[i - 1] >= 1.0)
