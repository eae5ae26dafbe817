"""Failed authentication slowed down: a token bucket per client address and per API key prefix, in process.

Each failed authentication takes a token from the buckets of its address and of the key prefix it named; an empty
bucket answers 429 with ``Retry-After`` before the credentials are even looked at, so guessing keys (or a portal
password through the API) costs the guesser time while a client that authenticates pays nothing. Buckets refill at
one token per ``refill_seconds``; full buckets are forgotten, so memory stays bounded by the clients that failed
recently.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class AuthThrottle:
    def __init__(self, burst: int, refill_seconds: float, max_keys: int = 100_000) -> None:
        self.burst, self.refill_seconds, self.max_keys = burst, refill_seconds, max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> _Bucket:
        b = self._buckets.get(key)
        if b is None:
            return _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) / self.refill_seconds)
        b.at = now
        return b

    def retry_after(self, *keys: str) -> int | None:
        """Seconds until every named bucket has a token again; None when they all have one now."""
        now = time.monotonic()
        with self._lock:
            waits = [(1 - b.tokens) * self.refill_seconds for k in keys if (b := self._level(k, now)).tokens < 1]
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            for k in keys:
                b = self._level(k, now)
                b.tokens = max(0.0, b.tokens - 1)
                self._buckets[k] = b

    def _forget_full(self, now: float) -> None:
        for k in [k for k, b in self._buckets.items() if self._level(k, now).tokens >= self.burst]:
            del self._buckets[k]
        while len(self._buckets) >= self.max_keys:  # still full of failing clients: drop the oldest
            del self._buckets[next(iter(self._buckets))]
