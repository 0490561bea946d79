"""The endpoints the gateway serves: an explicit table of method + path, nothing else.

A request reaches an upstream only when its method and its path name an entry here, the
path checked twice: as the client sent it (`raw_path`, before percent-decoding) and as the
server decoded it (`path`). Both must be the entry's path exactly, made of plain segments:
no percent-encoding at all, no `.` or `..` segment, no empty segment (double or trailing
slash), no backslash. So `%2e%2e`, `%2f`, `%5c`, `%252e`, `/./`, `//` and trailing text
are all 404 before anything is sent, and the upstream URL is built from the entry (plus
the one `{id}` segment, re-encoded), never from the client's path. Query strings are not
forwarded: none of these endpoints takes one.

To serve another endpoint add an `Endpoint` to `ENDPOINTS` (or build a `Table` with it);
its `kind` tells the handler what to do with it, and `headers` names request headers that
endpoint forwards beyond the common allowlist (e.g. `anthropic-version`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import quote

from proxy.anthropic_api import COUNT_TOKENS, MESSAGES
from proxy.openai_api import CHAT, COMPLETIONS, EMBEDDINGS, MODELS, RESPONSES, OpenAIError

# What the handler does with a request to an endpoint.
GENERATE = "generate"  # JSON body, guarded per the route
FORWARD = "forward"  # JSON body, forwarded as is (embeddings)
MODELS_KIND = "models"  # no body, the tenant's default route

ID = "{id}"
OTHER = "/v1/other"  # the label of anything not in the table (bounded metric labels)

# A plain path segment: RFC 3986 pchar without percent-encoding (what the openai SDK
# leaves unencoded in an id: letters, digits, -._~ and the sub-delims, ':' and '@').
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9\-._~!$&'()*+,;=:@]+)+")
_SEGMENT_SAFE = "!$&'()*+,;=:@"


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str  # as clients call it; at most one `{id}` segment, the last
    method: str
    kind: str
    upstream: str  # relative to the upstream's API root (`{id}` filled in re-encoded)
    headers: frozenset[str] = frozenset()  # extra request headers this endpoint forwards


class Target(NamedTuple):
    """A request matched to an endpoint: what it is and where upstream it goes. The
    endpoint's path (the template, for `{id}` paths) names it in spans and metrics."""

    endpoint: Endpoint
    path: str  # the client's path (canonical: it is plain)
    upstream_path: str  # relative to the upstream's API root, encoded


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(CHAT, "POST", GENERATE, "/chat/completions"),
    Endpoint(COMPLETIONS, "POST", GENERATE, "/completions"),
    Endpoint(RESPONSES, "POST", GENERATE, "/responses"),
    Endpoint(EMBEDDINGS, "POST", FORWARD, "/embeddings"),
    Endpoint(MODELS, "GET", MODELS_KIND, "/models"),
    Endpoint(MODELS + "/" + ID, "GET", MODELS_KIND, "/models/" + ID),
    # The Anthropic Messages API, for routes whose upstream has `api: anthropic`.
    Endpoint(MESSAGES, "POST", GENERATE, "/messages"),
    Endpoint(COUNT_TOKENS, "POST", FORWARD, "/messages/count_tokens"),
)


def not_found(method: str, path: str) -> OpenAIError:
    shown = path if len(path) <= 200 else path[:200] + "..."
    return OpenAIError(404, f"Invalid URL ({method} {shown})", code="unknown_url")


class MethodNotAllowed(OpenAIError):
    """405, with the `Allow` header RFC 9110 asks of it (the methods the path serves)."""

    def __init__(self, method: str, path: str, methods: Iterable[str]) -> None:
        allowed = ", ".join(sorted(methods))
        super().__init__(
            405,
            f"Method {method} is not allowed for {path} (use {allowed}).",
            code="method_not_allowed",
        )
        self.headers = [(b"allow", allowed.encode())]


def not_allowed(method: str, path: str, methods: Iterable[str]) -> MethodNotAllowed:
    return MethodNotAllowed(method, path, methods)


class Table:
    def __init__(self, endpoints: Iterable[Endpoint] = ENDPOINTS) -> None:
        self._fixed: dict[str, dict[str, Target]] = {}  # one Target per fixed path, reused
        self._with_id: dict[str, dict[str, Endpoint]] = {}  # prefix ending in "/"
        for e in endpoints:
            if not _PLAIN_PATH.fullmatch(e.path.replace(ID, "id")):
                raise ValueError(f"{e.path}: not a plain path")
            if ID in e.path:
                prefix = e.path.removesuffix(ID)
                if ID in prefix or not prefix.endswith("/"):
                    raise ValueError(f"{e.path}: {ID} must be the last segment")
                self._with_id.setdefault(prefix, {})[e.method] = e
            else:
                self._fixed.setdefault(e.path, {})[e.method] = Target(e, e.path, e.upstream)

    def resolve(self, method: str, path: str, raw_path: bytes | None) -> Target:
        """The endpoint for this request; OpenAIError 404 (not served) or 405 (wrong method)."""
        raw = path if raw_path is None else raw_path.decode("latin-1")
        if raw != path:
            raise not_found(method, raw)
        fixed = self._fixed.get(path)  # the table's own paths are plain
        if fixed is not None:
            if (target := fixed.get(method)) is None:
                raise not_allowed(method, path, fixed)
            return target
        if not _PLAIN_PATH.fullmatch(path):
            raise not_found(method, path)
        prefix, _, ident = path.rpartition("/")
        methods = self._with_id.get(prefix + "/")
        if methods is None or ident in (".", ".."):
            raise not_found(method, path)
        if (endpoint := methods.get(method)) is None:
            raise not_allowed(method, path, methods)
        return Target(
            endpoint, path, endpoint.upstream.replace(ID, quote(ident, safe=_SEGMENT_SAFE))
        )
