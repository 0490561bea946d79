"""Verdict cache: (policy version, content digest) -> Verdict, with in-flight coalescing.

Only real verdicts are cached; a classifier error is retried by the next request. Two
requests classifying the same content under the same policy version share one call. With
a shared cache (proxy.guard.shared_cache) a local miss looks there before the classifier
is called, and new verdicts are written there in the background.

`lookup` (the guarded hot path: one call per policy per piece of text, so a 10-turn
conversation under one `per_message` policy makes 10 a request) reads a plain dict in
front of cachetools' TTLCache, which stays the authority for size (LRU) and expiry.
Measured under valgrind (cachetools 8.0, 5,000 entries): `TTLCache.get` ~15,400
instructions a hit, the dict and a clock read ~2,400; a pass-through request is ~690,000.
One lookup through the library is ~2% of a pass-through request, the guard bench's two
~4.5%, that 10-turn conversation ~22%: over the ~5% bar, so the front dict stays.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from hashlib import blake2b
from time import monotonic

from cachetools import TTLCache

from proxy.guard.safeguard import Verdict
from proxy.guard.shared_cache import SharedCache
from proxy.policies import Policy

Key = tuple[str, str, bytes]
Entry = tuple[float, Verdict]


def cache_key(policy: Policy, content: str) -> Key:
    return policy.id, policy.version, blake2b(content.encode(), digest_size=16).digest()


class VerdictCache:
    def __init__(self, *, ttl_s: float, size: int, shared: SharedCache | None = None) -> None:
        self.shared = shared
        # Values are (expiry on the monotonic clock, verdict), as in `_hot`.
        self._verdicts: TTLCache[Key, Entry] = TTLCache(maxsize=max(size, 1), ttl=ttl_s)
        self._enabled = size > 0 and ttl_s > 0
        self._in_flight: dict[Key, asyncio.Future[Verdict]] = {}
        # A plain dict in front of the TTLCache for `lookup` (see the module docstring):
        # an entry expires at its insertion time + ttl, as in the TTLCache; it is emptied
        # whenever it outgrows `size` and refilled from the TTLCache as lookups hit there.
        self._hot: dict[Key, Entry] = {}
        self._ttl_s, self._size = ttl_s, size
        self.hits = 0
        self.misses = 0

    async def get_or_classify(
        self, policy: Policy, content: str, classify: Callable[[], Awaitable[Verdict]]
    ) -> Verdict:
        key = cache_key(policy, content)
        if self._enabled and (cached := self._verdicts.get(key)) is not None:
            self.hits += 1
            return cached[1]
        if (pending := self._in_flight.get(key)) is not None:
            try:
                verdict = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise
            else:
                self.hits += 1
                return replace(verdict, cache_hit=True)
            # The request that started this classification went away: run our own.
        self.misses += 1
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            verdict = await self._classify(key, classify)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            if self._in_flight.get(key) is future:
                del self._in_flight[key]
        future.set_result(verdict)
        if self._enabled:  # stored as later requests get it, so a hit copies nothing
            hit = replace(verdict, cache_hit=True, latency_ms=0.0)
            entry = (time.monotonic() + self._ttl_s, hit)
            self._verdicts[key] = entry
            self._keep_hot(key, entry)
        return verdict

    def _keep_hot(self, key: Key, entry: Entry) -> None:
        if len(self._hot) >= self._size:
            self._hot.clear()
        self._hot[key] = entry

    def lookup(self, policy: Policy, content: str) -> Verdict | None:
        """The cached verdict (marked a hit) without awaiting anything: the guard's fast
        path; None when it must call `get_or_classify`."""
        if not self._enabled:
            return None
        key = policy.id, policy.version, blake2b(content.encode(), digest_size=16).digest()
        hot = self._hot.get(key)
        if hot is not None and hot[0] > monotonic():
            self.hits += 1
            return hot[1]
        cached = self._verdicts.get(key)
        if cached is None:
            return None
        self.hits += 1
        self._keep_hot(key, cached)
        return cached[1]

    async def _classify(self, key: Key, classify: Callable[[], Awaitable[Verdict]]) -> Verdict:
        shared = self.shared
        if shared is None:
            return await classify()
        _, version, digest = key
        if (found := await shared.get(key[0], version, digest)) is not None:
            return found
        claimed = await shared.claim(version, digest)  # else another process classifies it
        if not claimed and (found := await shared.wait(key[0], version, digest)) is not None:
            return found
        try:
            verdict = await classify()
        except BaseException:  # a failure or a cancel: waiters should not wait it out
            if claimed:
                shared.release(version, digest)
            raise
        if verdict.error and claimed:
            shared.release(version, digest)
        elif not verdict.error:
            shared.put(version, digest, verdict)
        return verdict

    def clear(self) -> None:
        self._verdicts.clear()
        self._hot.clear()
