"""Gateways in front of the loopback Messages API upstream, and the official SDK on them."""

from __future__ import annotations

from typing import Any

import anthropic

from tests.conftest import KEY, GatewayFactory, RunningGateway

CLAUDE_KEY = "sk-ant-upstream-secret-never-leaks"


def claude_gateway(
    make_gateway: GatewayFactory,
    messages_upstream: Any,
    *,
    raw: dict | None = None,
    options: dict | None = None,
    **routes: dict,
) -> RunningGateway:
    """A gateway whose routes (acme reaches route NAME with models "NAME-*") lead to the
    Messages API upstream `claude`; acme's other models and globex stay on OpenAI."""
    config: dict[str, Any] = {
        "upstreams": {
            "claude": {
                "base_url": messages_upstream[1].url + "/v1",
                "api_key": CLAUDE_KEY,
                "api": "anthropic",
                "timeout_s": 2,
                "connect_timeout_s": 1,
            }
        }
    }
    config.update(raw or {})
    routes = {n: {"upstream": "claude", **r} for n, r in routes.items()}
    return make_gateway(raw=config, options=options, **routes)


def sdk(gw: RunningGateway, key: str = KEY, **options: Any) -> anthropic.Anthropic:
    """The official SDK pointed at the gateway (its base_url is the root, without /v1)."""
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, **options)


def user(text: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


TOOLS = [
    {
        "name": "search",
        "description": "Search the web.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]
