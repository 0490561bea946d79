"""Gateway keys -> tenant, and (tenant, model) -> route.

Keys are secrets: they are stored only as sha256 digests and compared in constant time
against every configured digest, so neither timing nor early exit tells a caller how
close a guess was. A tenant can only ever reach the routes its own config names.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Generic, TypeVar

from proxy.config import Config, Route, Tenant, key_digest

T = TypeVar("T")


class KeyRing(Generic[T]):
    """Secret keys -> their owner, compared in constant time against every key."""

    def __init__(self, owners: Iterable[tuple[str, T]]) -> None:
        self._entries = tuple((key_digest(key), owner) for key, owner in owners)

    @classmethod
    def of_digests(cls, owners: Iterable[tuple[bytes, T]]) -> KeyRing[T]:
        """A ring of secrets already digested (or MACs: anything compared as bytes)."""
        ring: KeyRing[T] = cls(())
        ring._entries = tuple(owners)
        return ring

    def __bool__(self) -> bool:
        return bool(self._entries)

    def owner(self, presented: str | None) -> T | None:
        if not presented:
            return None
        return self.match(hashlib.sha256(presented.encode()).digest())

    def match(self, digest: bytes) -> T | None:
        """The owner of this digest: every entry is compared, no early exit."""
        found: T | None = None
        for expected, owner in self._entries:
            if hmac.compare_digest(digest, expected):
                found = owner
        return found


class Tenancy:
    def __init__(self, config: Config) -> None:
        self._keys = KeyRing((key, t) for t in config.tenants.values() for key in t.keys)
        self._routes = config.routes

    def authenticate(self, presented: str | None) -> Tenant | None:
        """The tenant owning this key, or None."""
        return self._keys.owner(presented)

    def route_for(self, tenant: Tenant, model: str | None) -> Route | None:
        """First glob of the tenant's `routes` matching the model, else its `route`."""
        for glob, name in tenant.routes:
            if fnmatchcase(model or "", glob):
                return self._routes[name]
        return self._routes[tenant.route] if tenant.route else None

    def default_route(self, tenant: Tenant) -> Route:
        """The route for model-less calls (GET /v1/models): `route`, else the first glob's."""
        return self._routes[tenant.route or tenant.routes[0][1]]


def bearer_token(authorization: bytes | None, api_key: bytes | None = None) -> str | None:
    """The key from `Authorization: Bearer <key>` or Azure-style `api-key: <key>`."""
    if authorization:
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if api_key:
        return api_key.decode("latin-1").strip() or None
    return None
