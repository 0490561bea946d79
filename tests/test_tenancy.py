"""proxy/tenancy.py: gateway keys -> tenant, (tenant, model) -> route."""

from __future__ import annotations

import hashlib

import pytest

from proxy.config import parse_config
from proxy.tenancy import Tenancy, bearer_token

HASHED_KEY = "sk-acme-only-the-digest-is-configured"
HASHED_ENTRY = "sha256:" + hashlib.sha256(HASHED_KEY.encode()).hexdigest()

CONFIG = parse_config(
    {
        "upstreams": {"main": {"base_url": "http://127.0.0.1:9/v1"}},
        "routes": {name: {"upstream": "main"} for name in ("strict", "standard", "cheap")},
        "tenants": {
            "acme": {
                "keys": ["sk-acme", HASHED_ENTRY],
                "routes": {"gpt-4o-mini": "cheap", "gpt-4o*": "strict", "*": "standard"},
            },
            "globex": {"keys": ["sk-globex"], "route": "standard"},
            "initech": {"keys": ["sk-initech"], "routes": {"llama-*": "cheap"}},
            "hooli": {
                "keys": ["sha256:" + hashlib.sha256(b"sk-hooli").hexdigest().upper()],
                "route": "cheap",
                "routes": {"gpt-4o*": "strict"},
            },
        },
    }
)


@pytest.fixture
def tenancy() -> Tenancy:
    return Tenancy(CONFIG)


def route_name(tenancy: Tenancy, tenant: str, model: str | None) -> str | None:
    route = tenancy.route_for(CONFIG.tenants[tenant], model)
    return route.name if route else None


# --- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "tenant"),
    [
        ("sk-acme", "acme"),
        (HASHED_KEY, "acme"),  # configured only as its sha256 digest
        ("sk-globex", "globex"),
        ("sk-hooli", "hooli"),  # digest written in upper-case hex
    ],
)
def test_a_known_key_finds_its_tenant(tenancy: Tenancy, key: str, tenant: str) -> None:
    found = tenancy.authenticate(key)
    assert found is not None
    assert found.name == tenant


@pytest.mark.parametrize(
    "key",
    [None, "", "sk-nobody", "SK-ACME", "sk-acm", "sk-acme ", HASHED_ENTRY],
)
def test_wrong_or_empty_keys_find_no_tenant(tenancy: Tenancy, key: str | None) -> None:
    assert tenancy.authenticate(key) is None


@pytest.mark.parametrize(
    ("authorization", "api_key", "expected"),
    [
        (b"Bearer sk-acme", None, "sk-acme"),
        (b"bearer sk-acme", None, "sk-acme"),
        (b"Bearer   sk-acme  ", None, "sk-acme"),
        (None, b"sk-acme", "sk-acme"),  # Azure style
        (None, b"  sk-acme ", "sk-acme"),
        (b"Bearer sk-acme", b"sk-other", "sk-acme"),  # Authorization wins
        (b"Basic dXNlcjpwdw==", b"sk-acme", "sk-acme"),  # not a bearer: fall back to api-key
        (b"Basic dXNlcjpwdw==", None, None),
        (b"Bearer ", None, None),
        (b"sk-acme", None, None),  # a bare key without the scheme
        (None, b"   ", None),
        (None, None, None),
    ],
)
def test_bearer_and_api_key_headers(
    authorization: bytes | None, api_key: bytes | None, expected: str | None
) -> None:
    assert bearer_token(authorization, api_key) == expected


# --- routes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tenant", "model", "route"),
    [
        ("acme", "gpt-4o-mini", "cheap"),  # first match wins though gpt-4o* matches too
        ("acme", "gpt-4o", "strict"),
        ("acme", "gpt-4o-2024-08-06", "strict"),
        ("acme", "claude-3", "standard"),
        ("acme", None, "standard"),  # "*" matches a request without a model
        ("globex", "gpt-4o", "standard"),
        ("globex", None, "standard"),
        ("initech", "llama-3.1-8b", "cheap"),
        ("initech", "gpt-4o", None),  # no glob matches and no `route`: 404
        ("hooli", "gpt-4o", "strict"),  # `routes` first ...
        ("hooli", "llama-3", "cheap"),  # ... then `route`
    ],
)
def test_route_for_model(tenancy: Tenancy, tenant: str, model: str | None, route: str) -> None:
    assert route_name(tenancy, tenant, model) == route


@pytest.mark.parametrize(
    ("tenant", "route"),
    [("acme", "cheap"), ("globex", "standard"), ("initech", "cheap"), ("hooli", "cheap")],
)
def test_default_route_is_route_else_first_glob(tenancy: Tenancy, tenant: str, route: str) -> None:
    assert tenancy.default_route(CONFIG.tenants[tenant]).name == route


@pytest.mark.parametrize(
    ("tenant", "reachable"),
    [("globex", {"standard"}), ("initech", {"cheap", None}), ("hooli", {"strict", "cheap"})],
)
def test_a_tenant_only_reaches_routes_it_names(
    tenancy: Tenancy, tenant: str, reachable: set[str | None]
) -> None:
    models = [None, "", "*", "strict", "standard", "cheap", "gpt-4o", "gpt-4o-mini", "llama-3"]
    assert {route_name(tenancy, tenant, m) for m in models} <= reachable
