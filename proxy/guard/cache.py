"""Verdict cache: (policy version, content digest) -> Verdict, with in-flight coalescing.

Only real verdicts are cached; a classifier error is retried by the next request. Two
requests classifying the same content under the same policy version share one call. With
a shared cache (proxy.guard.shared_cache) a local miss looks there before the classifier
is called, and new verdicts are written there in the background.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from cachetools import TTLCache

from proxy.guard.safeguard import Verdict
from proxy.guard.shared_cache import SharedCache
from proxy.policies import Policy

Key = tuple[str, str, bytes]


def cache_key(policy: Policy, content: str) -> Key:
    return policy.id, policy.version, hashlib.blake2b(content.encode(), digest_size=16).digest()


class VerdictCache:
    def __init__(self, *, ttl_s: float, size: int, shared: SharedCache | None = None) -> None:
        self.shared = shared
        self._verdicts: TTLCache[Key, Verdict] = TTLCache(maxsize=max(size, 1), ttl=ttl_s)
        self._enabled = size > 0 and ttl_s > 0
        self._in_flight: dict[Key, asyncio.Future[Verdict]] = {}
        # A plain dict in front of the TTLCache for `lookup` (the guarded hot path): an
        # entry expires at its insertion time + ttl, as in the TTLCache; it is emptied
        # whenever it outgrows `size` (the TTLCache still does the LRU bookkeeping).
        self._hot: dict[Key, tuple[float, Verdict]] = {}
        self._ttl_s, self._size = ttl_s, size
        self.hits = 0
        self.misses = 0

    async def get_or_classify(
        self, policy: Policy, content: str, classify: Callable[[], Awaitable[Verdict]]
    ) -> Verdict:
        key = cache_key(policy, content)
        if self._enabled and (cached := self._verdicts.get(key)) is not None:
            self.hits += 1
            return cached
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
            self._verdicts[key] = hit
            if len(self._hot) >= self._size:
                self._hot.clear()
            self._hot[key] = (time.monotonic() + self._ttl_s, hit)
        return verdict

    def lookup(self, policy: Policy, content: str) -> Verdict | None:
        """The cached verdict (marked a hit) without awaiting anything: the guard's fast
        path; None when it must call `get_or_classify`."""
        if not self._enabled:
            return None
        key = cache_key(policy, content)
        hot = self._hot.get(key)
        if hot is not None and hot[0] > time.monotonic():
            self.hits += 1
            return hot[1]
        cached = self._verdicts.get(key)
        if cached is not None:
            self.hits += 1
        return cached

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
