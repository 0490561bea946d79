"""Console sign-in: an admin or reviewer key, exchanged once for a signed session cookie.

The cookie never holds the key or its digest: it carries a tag (HMAC of the key's digest
under the console secret), the time it was issued, a random session id and a signature.
The secret is the server's own (`server_secret`) mixed with every configured key's digest,
so all workers of a gateway agree on it, a config's `sha256:` keys forge nothing, and
rotating the keys ends every session. On each request the tag is looked up again in
constant time against every configured key, so a removed key's session ends and a
reviewer's cookie cannot become an admin's. CSRF tokens are HMACs of the session, so a
form posted from elsewhere (or without its token) is refused. Signing out records the
session id in the audit store (proxy.console.store), where every worker looks it up.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from proxy.config import key_digest
from proxy.tenancy import KeyRing

COOKIE = "sg_console"
LOGIN_COOKIE = "sg_console_login"
MAX_AGE_S = 12 * 3600
ADMIN, REVIEWER = "admin", "reviewer"


@dataclass(frozen=True, slots=True)
class Session:
    role: str  # admin | reviewer
    who: str  # "<role>:<8 hex>", a stable pseudonym of the key (what reviews record)
    csrf: str
    id: str = ""  # random per sign-in: what signing out revokes
    expires: float = 0.0  # unix seconds

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
        keys = [(k, key_digest(k), ADMIN) for k in admin_keys]
        keys += [(k, key_digest(k), REVIEWER) for k in reviewer_keys]
        material = b"".join(sorted(digest for _, digest, _ in keys))
        # The key digests alone are no secret (a config may list them as sha256:<hex>):
        # a secret of the server's own goes in, so reading the config forges nothing.
        self._secret = hashlib.sha256(
            b"safeguard-console/v1\0" + server_secret() + b"\0" + material
        ).digest()
        tagged = [(k, self._mac(b"key", digest), role) for k, digest, role in keys]
        # key -> (its tag, its role); a cookie's tag -> the role (both constant time)
        self._keys = KeyRing((k, (tag, role)) for k, tag, role in tagged)
        self._tags = KeyRing.of_digests((tag, role) for _, tag, role in tagged)
        self.max_age_s = max_age_s

    def __bool__(self) -> bool:
        return bool(self._keys)

    def _mac(self, purpose: bytes, data: bytes) -> bytes:
        return hmac.new(self._secret, purpose + b"\0" + data, hashlib.sha256).digest()

    def sign_in(self, presented: str, *, now: float | None = None) -> str | None:
        """The session cookie for a configured key, else None (constant time over keys)."""
        found = self._keys.owner(presented)
        if found is None:
            return None
        issued = int(time.time() if now is None else now)
        payload = f"{found[0].hex()}.{issued}.{secrets.token_hex(16)}"
        return f"{payload}.{self._mac(b'cookie', payload.encode()).hex()}"

    def session(self, cookie: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie proves, or None (forged, expired, or its key removed);
        whether it was signed out is the store's to say."""
        if not cookie or cookie.count(".") != 3:
            return None
        payload, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(
            signature.encode(), self._mac(b"cookie", payload.encode()).hex().encode()
        ):
            return None
        tag_hex, issued, sid = payload.split(".")
        current = time.time() if now is None else now
        if not issued.isdigit() or not 0 <= current - int(issued) < self.max_age_s:
            return None
        role = self._tags.match(bytes.fromhex(tag_hex) if _is_hex(tag_hex) else b"")
        if role is None:
            return None
        csrf = self._mac(b"csrf", payload.encode()).hex()[:40]
        return Session(role, f"{role}:{tag_hex[:8]}", csrf, sid, int(issued) + self.max_age_s)

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


COOKIE_SECURE_ENV = "SAFEGUARD_CONSOLE_COOKIE_SECURE"


def secure_cookie(scheme: str, client: str | None, forwarded_proto: str | None) -> bool:
    """Whether the console's cookies get `Secure`: always, except for plain http from a
    loopback peer (a browser on the gateway's own host, or the tests) that no proxy says
    was https. `X-Forwarded-Proto: https` needs no trusted-proxy list here: it can only
    add `Secure`. uvicorn already turns it into an https scheme for its trusted proxies
    (`FORWARDED_ALLOW_IPS`, 127.0.0.1 by default), and a proxy elsewhere is no loopback
    peer. `SAFEGUARD_CONSOLE_COOKIE_SECURE=1` forces it on, `=0` off (a console served
    over plain http on a private network, where a browser drops Secure cookies)."""
    setting = os.environ.get(COOKIE_SECURE_ENV, "").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    if scheme == "https" or (forwarded_proto or "").strip().lower() == "https":
        return True
    return not _loopback(client)


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
