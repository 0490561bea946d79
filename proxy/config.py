"""Gateway configuration: YAML with `${VAR}` / `${VAR:-default}` expansion, validated once.

Invalid config is refused with one ConfigError whose message names the key, e.g.
`routes.default.input.mode: must be one of parallel, sequential (got 'fast')`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEV_KEY = "sk-safeguard-dev"  # built-in development key of the default config


class ConfigError(ValueError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key


def host_port(url: str) -> tuple[str, int]:
    """Host and port of a URL, the port defaulting by scheme (span attributes)."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True, slots=True)
class Server:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    base_url: str
    api_key: str = ""
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict)
    api: str = "openai"  # the wire format it speaks: openai | anthropic (Messages API)


@dataclass(frozen=True, slots=True)
class Classifier:
    base_url: str = "http://127.0.0.1:30000/v1"
    model: str = "openai/gpt-oss-safeguard-20b"
    reasoning_effort: str = "low"
    timeout_s: float = 20.0
    api_key: str = ""
    cache_ttl_s: float = 3600.0
    cache_size: int = 10_000


@dataclass(frozen=True, slots=True)
class PolicyRef:
    id: str
    action: str | None = None  # overrides the policy's own default action


@dataclass(frozen=True, slots=True)
class Side:
    policies: tuple[PolicyRef, ...] = ()
    shadow: tuple[PolicyRef, ...] = ()
    mode: str = "sequential"  # input: parallel | sequential
    stream: str = "window"  # output: window | buffer | passthrough
    window_chars: int = 400
    overlap_chars: int = 120
    window_ms: int = 1000  # the longest text waits in a window before it is checked
    thinking: bool = False  # output: also guard Anthropic `thinking` blocks

    @property
    def guarded(self) -> bool:
        """Any policy at all on this side, enforced or shadow."""
        return bool(self.policies or self.shadow)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    upstream: str
    input: Side = Side()
    output: Side = Side()
    fail: str = "closed"  # classifier unusable: closed | open


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    keys: tuple[str, ...]
    route: str | None = None
    routes: tuple[tuple[str, str], ...] = ()  # (model glob, route), first match wins


@dataclass(frozen=True, slots=True)
class Audit:
    path: str = "data/audit.db"
    content: str = "redacted"  # full | redacted | hash | none
    enabled: bool = True
    queue_size: int = 10_000
    batch_size: int = 256
    flush_interval_s: float = 0.2
    spill_path: str | None = None  # default: <path>.spill.jsonl


@dataclass(frozen=True, slots=True)
class Telemetry:
    traces: str = "none"  # none | console | otlp
    metrics: str = "prometheus"  # none | prometheus | otlp
    service_name: str = "safeguard-gateway"
    sample_ratio: float = 1.0  # head sampling of new traces (OTEL_TRACES_SAMPLER wins)


@dataclass(frozen=True, slots=True)
class Config:
    server: Server
    upstreams: Mapping[str, Upstream]
    classifier: Classifier
    policies_dir: str
    tenants: Mapping[str, Tenant]
    routes: Mapping[str, Route]
    admin_keys: tuple[str, ...] = ()
    audit: Audit = Audit()
    telemetry: Telemetry = Telemetry()
    source: str | None = None  # the file it was read from

    @property
    def uses_dev_key(self) -> bool:
        return any(DEV_KEY in t.keys for t in self.tenants.values())


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Expand `${VAR}` (empty when unset) and `${VAR:-default}` (default when unset or empty)."""

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name, "")
        return value if value or default is None else default

    return _VAR.sub(sub, text)


REQUIRED: Any = object()


def _coerce(value: Any, kind: type) -> Any:
    """Numbers and booleans written as strings (as `${VAR}` expansions are) become typed."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and kind in (int, float):
        try:
            return kind(value.strip())
        except ValueError:
            return value
    if kind is bool and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def _load_yaml_with_env(text: str, env: Mapping[str, str]) -> Any:
    """Parse YAML with each `${...}` standing in as a plain placeholder, then expand the
    placeholders inside the parsed strings: the references work anywhere (flow mappings
    included) and a value is never re-read as YAML, so `#`, `:` or digits in a secret
    stay exactly as they are."""
    references: list[str] = []

    def hold(match: re.Match[str]) -> str:
        references.append(match.group(0))
        return f"__SAFEGUARD_ENV_{len(references) - 1}__"

    def expand(data: Any) -> Any:
        if isinstance(data, str):
            return _PLACEHOLDER.sub(lambda m: expand_env(references[int(m.group(1))], env), data)
        if isinstance(data, list):
            return [expand(item) for item in data]
        if isinstance(data, dict):
            return {key: expand(value) for key, value in data.items()}
        return data

    return expand(yaml.safe_load(_VAR.sub(hold, text)))


_SHA256_KEY = re.compile(r"sha256:[0-9a-fA-F]{64}")


def key_digest(key: str) -> bytes:
    """The sha256 digest a key is stored and compared as (`sha256:<hex>` keys are digests)."""
    if key.startswith("sha256:"):
        return bytes.fromhex(key[7:])
    return hashlib.sha256(key.encode()).digest()


def _check_keys(path: str, keys: tuple[str, ...]) -> None:
    if any(k.startswith("sha256:") and not _SHA256_KEY.fullmatch(k) for k in keys):
        raise ConfigError(path, "a sha256: key must carry 64 hex digits")


_PLACEHOLDER = re.compile(r"__SAFEGUARD_ENV_(\d+)__")


class _Reader:
    """Walks the raw mapping, tracking the dotted key path for error messages."""

    def __init__(self, data: Any, key: str) -> None:
        self.data = data if data is not None else {}
        self.key = key
        if not isinstance(self.data, dict):
            raise ConfigError(key, f"must be a mapping (got {type(data).__name__})")

    def child(self, name: str) -> _Reader:
        return _Reader(self.data.get(name), self._path(name))

    def _path(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def only(self, *allowed: str) -> None:
        for name in self.data:
            if name not in allowed:
                raise ConfigError(
                    self._path(str(name)), f"unknown key (expected one of {', '.join(allowed)})"
                )

    def get(self, name: str, kind: type, default: Any = REQUIRED, choices: tuple = ()) -> Any:
        value = self.data.get(name)
        if value is None or (value == "" and default is not REQUIRED):  # unset ${VAR}
            if default is REQUIRED:
                raise ConfigError(self._path(name), "is required")
            return default
        value = _coerce(value, kind)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(self._path(name), f"must be {kind.__name__} (got {value!r})")
        if choices and value not in choices:
            raise ConfigError(
                self._path(name), f"must be one of {', '.join(choices)} (got {value!r})"
            )
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.data.get(name) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self._path(name), "must be a list of strings")
        return tuple(value)


def _policy_refs(side: _Reader, name: str) -> tuple[PolicyRef, ...]:
    raw = side.data.get(name) or []
    if not isinstance(raw, list):
        raise ConfigError(side._path(name), "must be a list of policy ids or {id, action}")
    refs = []
    for i, item in enumerate(raw):
        key = f"{side._path(name)}[{i}]"
        if isinstance(item, str):
            refs.append(PolicyRef(item))
        elif isinstance(item, dict) and isinstance(item.get("id"), str):
            entry = _Reader(item, key)
            entry.only("id", "action")
            refs.append(
                PolicyRef(
                    item["id"],
                    entry.get("action", str, None, ("block", "redact", "annotate", "log")),
                )
            )
        else:
            raise ConfigError(key, "must be a policy id or {id: ..., action: ...}")
    return tuple(refs)


def _side(r: _Reader, *, output: bool) -> Side:
    r.only(
        "policies",
        "shadow",
        "mode",
        "stream",
        "window_chars",
        "overlap_chars",
        "window_ms",
        *(("thinking",) if output else ()),
    )
    side = Side(
        policies=_policy_refs(r, "policies"),
        shadow=_policy_refs(r, "shadow"),
        mode=r.get("mode", str, "sequential", ("parallel", "sequential")),
        stream=r.get("stream", str, "window", ("window", "buffer", "passthrough")),
        window_chars=r.get("window_chars", int, 400),
        overlap_chars=r.get("overlap_chars", int, 120),
        window_ms=r.get("window_ms", int, 1000),
        thinking=r.get("thinking", bool, False) if output else False,
    )
    if side.window_ms < 10:
        raise ConfigError(r._path("window_ms"), "must be at least 10")
    if side.window_chars < 16:
        raise ConfigError(r._path("window_chars"), "must be at least 16")
    if not 0 <= side.overlap_chars < side.window_chars:
        raise ConfigError(r._path("overlap_chars"), "must be between 0 and window_chars")
    return side


def parse_config(data: Any, *, source: str | None = None) -> Config:
    root = _Reader(data, "")
    root.only(
        "server",
        "upstreams",
        "classifier",
        "policies_dir",
        "tenants",
        "routes",
        "admin",
        "audit",
        "telemetry",
    )

    s = root.child("server")
    s.only("host", "port", "workers", "max_body_bytes")
    server = Server(
        host=s.get("host", str, "127.0.0.1"),
        port=s.get("port", int, 8080),
        workers=s.get("workers", int, 1),
        max_body_bytes=s.get("max_body_bytes", int, 4 * 1024 * 1024),
    )

    upstreams: dict[str, Upstream] = {}
    ups = root.child("upstreams")
    if not ups.data:
        raise ConfigError("upstreams", "at least one upstream is required")
    for name in ups.data:
        u = ups.child(name)
        u.only("base_url", "api_key", "timeout_s", "connect_timeout_s", "headers", "api")
        base_url = u.get("base_url", str).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(u._path("base_url"), f"must be an http(s) URL (got {base_url!r})")
        headers = u.data.get("headers") or {}
        if not isinstance(headers, dict):
            raise ConfigError(u._path("headers"), "must be a mapping")
        upstreams[name] = Upstream(
            name=name,
            base_url=base_url,
            api_key=u.get("api_key", str, ""),
            timeout_s=u.get("timeout_s", float, 600.0),
            connect_timeout_s=u.get("connect_timeout_s", float, 10.0),
            headers={str(k): str(v) for k, v in headers.items()},
            api=u.get("api", str, "openai", ("openai", "anthropic")),
        )

    c = root.child("classifier")
    c.only(
        "base_url", "model", "reasoning_effort", "timeout_s", "api_key", "cache_ttl_s", "cache_size"
    )
    classifier = Classifier(
        base_url=c.get("base_url", str, "http://127.0.0.1:30000/v1").rstrip("/"),
        model=c.get("model", str, "openai/gpt-oss-safeguard-20b"),
        reasoning_effort=c.get("reasoning_effort", str, "low", ("low", "medium", "high")),
        timeout_s=c.get("timeout_s", float, 20.0),
        api_key=c.get("api_key", str, ""),
        cache_ttl_s=c.get("cache_ttl_s", float, 3600.0),
        cache_size=c.get("cache_size", int, 10_000),
    )

    routes: dict[str, Route] = {}
    rs = root.child("routes")
    if not rs.data:
        raise ConfigError("routes", "at least one route is required")
    for name in rs.data:
        r = rs.child(name)
        r.only("upstream", "input", "output", "fail")
        upstream = r.get("upstream", str)
        if upstream not in upstreams:
            raise ConfigError(
                r._path("upstream"), f"names no upstream (have {', '.join(upstreams)})"
            )
        routes[name] = Route(
            name=name,
            upstream=upstream,
            input=_side(r.child("input"), output=False),
            output=_side(r.child("output"), output=True),
            fail=r.get("fail", str, "closed", ("closed", "open")),
        )

    tenants: dict[str, Tenant] = {}
    ts = root.child("tenants")
    if not ts.data:
        raise ConfigError("tenants", "at least one tenant is required")
    seen_keys: dict[bytes, str] = {}
    for name in ts.data:
        t = ts.child(name)
        t.only("keys", "route", "routes")
        keys = tuple(k for k in t.strings("keys") if k)
        if not keys:
            raise ConfigError(t._path("keys"), "needs at least one non-empty key")
        _check_keys(t._path("keys"), keys)
        for key in keys:
            digest = key_digest(key)
            if digest in seen_keys:
                raise ConfigError(
                    t._path("keys"), f"a key is shared with tenant {seen_keys[digest]!r}"
                )
            seen_keys[digest] = name
        route = t.get("route", str, None)
        if route is not None and route not in routes:
            raise ConfigError(t._path("route"), f"names no route {route!r}")
        by_model_raw = t.data.get("routes") or {}
        if not isinstance(by_model_raw, dict):
            raise ConfigError(t._path("routes"), "must map model globs to route names")
        by_model = tuple((str(g), str(rn)) for g, rn in by_model_raw.items())
        if route is None and not by_model:
            raise ConfigError(t._path("route"), "a tenant needs `route` or `routes`")
        for glob, route_name in by_model:
            if route_name not in routes:
                raise ConfigError(
                    t._path("routes"),
                    f"names no route {route_name!r} (glob {glob!r})",
                )
        tenants[name] = Tenant(name=name, keys=keys, route=route, routes=by_model)

    a = root.child("admin")
    a.only("keys")
    admin_keys = tuple(k for k in a.strings("keys") if k)
    _check_keys("admin.keys", admin_keys)

    au = root.child("audit")
    au.only(
        "path", "content", "enabled", "queue_size", "batch_size", "flush_interval_s", "spill_path"
    )
    audit = Audit(
        path=au.get("path", str, "data/audit.db"),
        content=au.get("content", str, "redacted", ("full", "redacted", "hash", "none")),
        enabled=au.get("enabled", bool, True),
        queue_size=au.get("queue_size", int, 10_000),
        batch_size=au.get("batch_size", int, 256),
        flush_interval_s=au.get("flush_interval_s", float, 0.2),
        spill_path=au.get("spill_path", str, None),
    )

    te = root.child("telemetry")
    te.only("traces", "metrics", "service_name", "sample_ratio")
    telemetry = Telemetry(
        traces=te.get("traces", str, "none", ("none", "console", "otlp")),
        metrics=te.get("metrics", str, "prometheus", ("none", "prometheus", "otlp")),
        service_name=te.get("service_name", str, "safeguard-gateway"),
        sample_ratio=te.get("sample_ratio", float, 1.0),
    )

    if not 0.0 <= telemetry.sample_ratio <= 1.0:
        raise ConfigError("telemetry.sample_ratio", "must be between 0 and 1")

    return Config(
        server=server,
        upstreams=upstreams,
        classifier=classifier,
        policies_dir=root.get("policies_dir", str, "policies"),
        tenants=tenants,
        routes=routes,
        admin_keys=admin_keys,
        audit=audit,
        telemetry=telemetry,
        source=source,
    )


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate a config file (relative paths in it are relative to the CWD)."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = _load_yaml_with_env(text, os.environ if env is None else env)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError("", f"{path}: not valid YAML{where}") from None
    return parse_config(data, source=str(path))
