"""Sign-in attempts: at most `most` failed sign-ins a minute per client address and per
key prefix, then 429 with Retry-After until the oldest failure leaves the window.

Per address stops one client guessing: a limited address is refused before its key is
checked, so a right guess from it during the wait proves nothing. Per key prefix slows
many addresses guessing at one key family (`sk-admin-...`), but only ever refuses a
wrong key: the key is checked first and a right one signs in, so failures sent at a
prefix cannot lock its real holders out. The counts are per worker process (with
`--workers N` a client gets at most N times the limit), kept for at most `tracked`
buckets (the least recently failed are forgotten first), and hold only a digest of the
prefix, never key text.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict, deque

PREFIX = 8  # characters of the presented key that name its bucket


class SignInLimit:
    def __init__(self, most: int = 10, window_s: float = 60.0, *, tracked: int = 10_000) -> None:
        self.most, self.window_s, self.tracked = most, window_s, tracked
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(
        self, client: str | None, key: str | None = None, *, now: float | None = None
    ) -> int:
        """Seconds until this client may try this key again; 0 when it may now.

        Without `key`, only the client's address counts (the check made before a key is
        read); with it, the key's prefix counts too (the check made on a wrong key).
        """
        current = time.monotonic() if now is None else now
        wait = 0.0
        buckets = _buckets(client, key) if key is not None else (_address(client),)
        for bucket in buckets:
            times = self._recent(bucket, current)
            if times is not None and len(times) >= self.most:
                wait = max(wait, times[0] + self.window_s - current)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, client: str | None, key: str, *, now: float | None = None) -> None:
        current = time.monotonic() if now is None else now
        for bucket in _buckets(client, key):
            times = self._recent(bucket, current)
            if times is None:
                times = self._failures[bucket] = deque()
            times.append(current)
            self._failures.move_to_end(bucket)
        while len(self._failures) > self.tracked:
            self._failures.popitem(last=False)

    def _recent(self, bucket: str, now: float) -> deque[float] | None:
        times = self._failures.get(bucket)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[bucket]
            return None
        return times


def _buckets(client: str | None, key: str) -> tuple[str, str]:
    prefix = hashlib.sha256(key[:PREFIX].encode("utf-8", "replace")).hexdigest()[:16]
    return _address(client), f"key:{prefix}"


def _address(client: str | None) -> str:
    return f"addr:{client or '?'}"
