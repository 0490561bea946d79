"""The shared verdict cache (`classifier.cache_url: redis://...`, Redis or Valkey).

Behind each process's in-process cache (proxy.guard.cache): a local miss looks here before
calling the classifier, and a new verdict is written here in the background, so many
workers and pods pay the classifier once per (policy version, content). Keys are the
policy version and the content digest only: tenants sharing a policy version share hits
and nothing else (a verdict holds labels and the model's rationale, never the content).

A text first seen by several processes at once is classified once: the first to miss
claims it (`SET NX`, for as long as a classification may take) and the others wait for
the verdict it writes, or classify themselves once its claim is gone.

Never an error source: a lookup that fails or takes longer than `timeout_s` is a miss,
counted as an error, and the cache is then left alone for `retry_after_s` (the process
works from its local cache meanwhile) before it is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict
from typing import Any

import orjson

from proxy.guard.safeguard import Verdict

log = logging.getLogger("proxy.guard")

PREFIX = "safeguard:verdict:"
CLAIM_PREFIX = "safeguard:claim:"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"
POLL_S = 0.01  # how often a waiting process looks for a claimed text's verdict
_STORED = ("violation", "category", "rationale", "reasoning", "source")


def redis_url(url: str) -> str:
    """valkey:// and valkeys:// as redis-py spells them."""
    for scheme, same in (("valkey://", "redis://"), ("valkeys://", "rediss://")):
        if url.startswith(scheme):
            return same + url[len(scheme) :]
    return url


def shared_key(version: str, digest: bytes) -> str:
    return f"{PREFIX}{version}:{digest.hex()}"


def claim_key(version: str, digest: bytes) -> str:
    return f"{CLAIM_PREFIX}{version}:{digest.hex()}"


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
        claim_s: float = 20.0,
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
        self._claim_ms = max(1, int(claim_s * 1000))
        self._token = os.urandom(16).hex().encode()  # whose claim it is
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

    async def claim(self, version: str, digest: bytes) -> bool:
        """True when this process should classify: it holds the fleet-wide claim on the
        text now, or the cache cannot tell."""
        if not self.up:
            return True
        try:
            return bool(
                await asyncio.wait_for(
                    self._client.set(
                        claim_key(version, digest), self._token, nx=True, px=self._claim_ms
                    ),
                    self._timeout_s,
                )
            )
        except Exception as exc:
            self._failed(exc)
            return True

    async def wait(self, policy_id: str, version: str, digest: bytes) -> Verdict | None:
        """Another process claimed the text: the verdict it writes, or None once its claim
        is gone (it failed) or has run out."""
        key, claim = shared_key(version, digest), claim_key(version, digest)
        deadline = time.monotonic() + self._claim_ms / 1000
        while self.up and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            try:
                data, held = await asyncio.wait_for(self._client.mget(key, claim), self._timeout_s)
            except Exception as exc:
                self._failed(exc)
                return None
            if data is not None:
                self.hits += 1
                return decode_verdict(data, policy_id, version)
            if held is None:
                return None
        return None

    def release(self, version: str, digest: bytes) -> None:
        """Give up a claim without a verdict (the classification failed): waiters go on."""
        if self.up:  # only our own claim: a slow process must not end another's
            key = claim_key(version, digest)
            self._background(self._client.eval(_RELEASE, 1, key, self._token))

    def put(self, version: str, digest: bytes, verdict: Verdict) -> None:
        """Write in the background; the request does not wait for it."""
        if self.up:
            write = self._client.set(
                shared_key(version, digest), encode_verdict(verdict), px=self._ttl_ms
            )
            self._background(write, counted=True)

    def _background(self, command: Any, *, counted: bool = False) -> None:
        task = asyncio.ensure_future(self._send(command, counted))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _send(self, command: Any, counted: bool) -> None:
        try:
            await asyncio.wait_for(command, self._timeout_s)
            self.writes += counted
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
