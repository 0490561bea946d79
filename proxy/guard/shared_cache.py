"""The shared verdict cache (`classifier.cache_url: redis://...`, Redis or Valkey).

Behind each process's in-process cache (proxy.guard.cache): a local miss looks here before
calling the classifier, and a new verdict is written here in the background, so many
workers and pods pay the classifier once per (policy version, content). Keys are the
policy version and the content digest only: tenants sharing a policy version share hits
and nothing else (a verdict holds labels and the model's rationale, never the content).

Never an error source: a lookup that fails or takes longer than `timeout_s` is a miss,
counted as an error, and the cache is then left alone for `retry_after_s` (the process
works from its local cache meanwhile) before it is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Any

import orjson

from proxy.guard.safeguard import Verdict

log = logging.getLogger("proxy.guard")

PREFIX = "safeguard:verdict:"
_STORED = ("violation", "category", "rationale", "reasoning", "source")


def redis_url(url: str) -> str:
    """valkey:// and valkeys:// as redis-py spells them."""
    for scheme, same in (("valkey://", "redis://"), ("valkeys://", "rediss://")):
        if url.startswith(scheme):
            return same + url[len(scheme) :]
    return url


def shared_key(version: str, digest: bytes) -> str:
    return f"{PREFIX}{version}:{digest.hex()}"


def encode_verdict(verdict: Verdict) -> bytes:
    fields = asdict(verdict)
    return orjson.dumps({k: fields[k] for k in _STORED})


def decode_verdict(data: bytes, policy_id: str, version: str) -> Verdict:
    fields = orjson.loads(data)
    return Verdict(
        policy_id,
        version,
        bool(fields["violation"]),
        **{k: fields.get(k) for k in _STORED[1:] if fields.get(k) is not None},
        cache_hit=True,
    )


class SharedCache:
    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        timeout_s: float = 0.25,
        retry_after_s: float = 5.0,
        client: Any = None,
    ) -> None:
        if client is None:
            import redis.asyncio

            client = redis.asyncio.from_url(
                redis_url(url),
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry_on_timeout=False,
            )
        self._client = client
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._down_until = 0.0
        self._writes: set[asyncio.Task[None]] = set()
        self.hits = self.misses = self.errors = self.writes = 0

    @property
    def up(self) -> bool:
        return time.monotonic() >= self._down_until

    async def get(self, policy_id: str, version: str, digest: bytes) -> Verdict | None:
        """The shared verdict, or None (absent, unreadable, or the cache is down)."""
        if not self.up:
            return None
        try:
            data = await asyncio.wait_for(
                self._client.get(shared_key(version, digest)), self._timeout_s
            )
            verdict = None if data is None else decode_verdict(data, policy_id, version)
        except Exception as exc:  # any failure degrades to the local cache
            self._failed(exc)
            return None
        if verdict is None:
            self.misses += 1
        else:
            self.hits += 1
        return verdict

    def put(self, version: str, digest: bytes, verdict: Verdict) -> None:
        """Write in the background; the request does not wait for it."""
        if not self.up:
            return
        task = asyncio.ensure_future(self._put(shared_key(version, digest), verdict))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, key: str, verdict: Verdict) -> None:
        try:
            await asyncio.wait_for(
                self._client.set(key, encode_verdict(verdict), px=self._ttl_ms), self._timeout_s
            )
            self.writes += 1
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.up:
            log.warning(
                "shared verdict cache unavailable (%s); using the local cache for %.0f s",
                type(exc).__name__,
                self._retry_after_s,
            )
        self._down_until = time.monotonic() + self._retry_after_s

    def stats(self) -> dict[str, float]:
        return {
            "hit": self.hits,
            "miss": self.misses,
            "error": self.errors,
            "write": self.writes,
        }

    async def aclose(self) -> None:
        if self._writes:
            await asyncio.wait(self._writes, timeout=self._timeout_s * 2)
        try:
            await self._client.aclose()
        except Exception:  # closing a client whose server is gone
            log.debug("shared cache close failed", exc_info=True)
