"""Console sign-in: an admin or reviewer key, exchanged once for a signed session cookie.

The cookie never holds the key or its digest: it carries a tag (HMAC of the key's digest
under the console secret), the time it was issued and a signature. The secret is the
server's own (`server_secret`) mixed with every configured key's digest, so all workers
of a gateway agree on it, a config's `sha256:` keys forge nothing, and rotating the keys
ends every session. On each request the tag is looked
up again in constant time against every configured key, so a removed key's session ends
and a reviewer's cookie cannot become an admin's. CSRF tokens are HMACs of the session,
so a form posted from elsewhere (or without its token) is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from proxy.config import key_digest

COOKIE = "sg_console"
LOGIN_COOKIE = "sg_console_login"
MAX_AGE_S = 12 * 3600
ADMIN, REVIEWER = "admin", "reviewer"


@dataclass(frozen=True, slots=True)
class Session:
    role: str  # admin | reviewer
    who: str  # "<role>:<8 hex>", a stable pseudonym of the key (what reviews record)
    csrf: str

    @property
    def admin(self) -> bool:
        return self.role == ADMIN


SECRET_ENV = "SAFEGUARD_CONSOLE_SECRET"


def server_secret() -> bytes:
    """`SAFEGUARD_CONSOLE_SECRET` when set (pods that share sessions set one from a
    Secret), else made once per server and handed to its workers through the
    environment: sessions then end when the server restarts."""
    if not os.environ.get(SECRET_ENV):
        os.environ[SECRET_ENV] = secrets.token_hex(32)
    return os.environ[SECRET_ENV].encode()


class Sessions:
    def __init__(
        self,
        admin_keys: Iterable[str],
        reviewer_keys: Iterable[str],
        *,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        keys = [(key_digest(k), ADMIN) for k in admin_keys]
        keys += [(key_digest(k), REVIEWER) for k in reviewer_keys]
        material = b"".join(sorted(digest for digest, _ in keys))
        # The key digests alone are no secret (a config may list them as sha256:<hex>):
        # a secret of the server's own goes in, so reading the config forges nothing.
        self._secret = hashlib.sha256(
            b"safeguard-console/v1\0" + server_secret() + b"\0" + material
        ).digest()
        self._keys = tuple((digest, self._mac(b"key", digest), role) for digest, role in keys)
        self.max_age_s = max_age_s

    def __bool__(self) -> bool:
        return bool(self._keys)

    def _mac(self, purpose: bytes, data: bytes) -> bytes:
        return hmac.new(self._secret, purpose + b"\0" + data, hashlib.sha256).digest()

    def sign_in(self, presented: str, *, now: float | None = None) -> str | None:
        """The session cookie for a configured key, else None (constant time over keys)."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for expected, tag, _role in self._keys:
            if hmac.compare_digest(digest, expected):
                found = tag
        if found is None:
            return None
        issued = int(time.time() if now is None else now)
        payload = f"{found.hex()}.{issued}"
        return f"{payload}.{self._mac(b'cookie', payload.encode()).hex()}"

    def session(self, cookie: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie proves, or None (forged, expired, or its key removed)."""
        if not cookie or cookie.count(".") != 2:
            return None
        payload, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(
            signature.encode(), self._mac(b"cookie", payload.encode()).hex().encode()
        ):
            return None
        tag_hex, _, issued = payload.partition(".")
        current = time.time() if now is None else now
        if not issued.isdigit() or not 0 <= current - int(issued) < self.max_age_s:
            return None
        tag = bytes.fromhex(tag_hex) if _is_hex(tag_hex) else b""
        role = None
        for _digest, expected, owner in self._keys:
            if hmac.compare_digest(tag, expected):
                role = owner
        if role is None:
            return None
        csrf = self._mac(b"csrf", payload.encode()).hex()[:40]
        return Session(role, f"{role}:{tag_hex[:8]}", csrf)

    # -- the sign-in form's own CSRF token, bound to a random pre-session cookie ----------

    @staticmethod
    def login_nonce() -> str:
        return secrets.token_hex(16)

    def login_token(self, nonce: str) -> str:
        return self._mac(b"login", nonce.encode()).hex()[:40]

    def check_login_token(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token:
            return False
        return hmac.compare_digest(token.encode(), self.login_token(nonce).encode())


def same_token(expected: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(expected.encode(), presented.encode())


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
