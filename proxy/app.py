"""The ASGI application: `/v1/*` goes straight to the pure-ASGI proxy, the rest (health,
readiness, metrics, admin) through Starlette. Lifespan opens and drains the services."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from proxy.audit_backends import store_errors
from proxy.audit_store import audit_page
from proxy.config import DEV_KEY, Config, load_config
from proxy.console import build_console
from proxy.gateway import Gateway
from proxy.handler import ProxyHandler
from proxy.mcp.relay import PREFIX as MCP_PREFIX
from proxy.mcp.relay import McpHandler
from proxy.openai_api import OpenAIError
from proxy.tenancy import KeyRing, bearer_token

log = logging.getLogger("proxy")
GC_GEN0_THRESHOLD = 10_000


def _error(exc: OpenAIError) -> Response:
    return Response(exc.body(), status_code=exc.status, media_type="application/json")


class AdminAuth:
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = KeyRing((key, True) for key in keys)  # plain or sha256: like tenant keys

    def check(self, request: Request) -> Response | None:
        """None when the request carries an admin key, else the error response."""
        if not self._keys:
            return _error(
                OpenAIError(
                    404, "Admin endpoints are disabled (no admin keys).", code="admin_disabled"
                )
            )
        token = bearer_token(request.headers.get("authorization", "").encode("latin-1"))
        if not self._keys.owner(token):
            return _error(OpenAIError(401, "An admin key is required.", code="invalid_admin_key"))
        return None


def build_app(config: Config, **gateway_options: Any) -> Any:
    gateway = Gateway(config, **gateway_options)
    proxy = ProxyHandler(gateway)
    mcp = McpHandler(gateway, proxy)
    admin = AdminAuth(config.admin_keys)

    last_readiness: list[tuple[bool, str] | None] = [None]  # log a change once, not each probe

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        """Unauthenticated: states only. Where each service is goes to the log."""
        ok, checks = await gateway.ready()
        state = (ok, repr(checks))
        if state != last_readiness[0] and (not ok or checks.get("classifier", "ok") != "ok"):
            log.warning(
                "readiness %s: %s (classifier at %s; upstreams at %s)",
                "ok" if ok else "failing",
                checks,
                gateway.config.classifier.base_url,  # the config in force (reloads swap it)
                ", ".join(f"{n}={u.base_url}" for n, u in gateway.config.upstreams.items()),
            )
        last_readiness[0] = state
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    async def reload(request: Request) -> Response:
        if denied := admin.check(request):
            return denied
        ok, detail = await gateway.reload()
        return JSONResponse(
            {
                "reloaded": ok,
                "detail": detail,
                "policies": {p.id: p.version for p in gateway.policies.values()},
                "set": gateway.set_id,
            },
            status_code=200 if ok else 422,
        )

    async def audit(request: Request) -> Response:
        if denied := admin.check(request):
            return denied
        try:
            page = await audit_page(config.audit, dict(request.query_params))
        except ValueError as exc:
            return _error(OpenAIError(400, str(exc), code="invalid_query"))
        except store_errors(config.audit) as exc:
            log.warning("audit store unreadable: %s", type(exc).__name__)
            return _error(
                OpenAIError(
                    503,
                    "The audit store is unavailable.",
                    type="server_error",
                    code="audit_unavailable",
                )
            )
        except FileNotFoundError:
            page = {"object": "list", "data": [], "has_more": False, "next_offset": None}
        return JSONResponse(page)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        if config.uses_dev_key:
            log.warning("!" * 78)
            log.warning(
                "RUNNING WITH THE BUILT-IN DEVELOPMENT KEY %r. Anyone who can reach this", DEV_KEY
            )
            log.warning("port can use it. Set real tenant keys before exposing the gateway.")
            log.warning("!" * 78)
        if gateway.uses_classifier:
            ok, detail = await gateway.classifier.ready()
            if not ok:
                log.warning(
                    "classifier (gpt-oss-safeguard) at %s is not ready: %s; guarded routes "
                    "answer per their fail mode until it is (see /readyz; diagnose with "
                    "`safeguard-gateway classifier check --config PATH`)",
                    config.classifier.base_url,
                    detail,
                )
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not main thread
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: gateway.in_background(gateway.reload())
            )
        # What exists now lives as long as the process: keep the collector from
        # traversing it on every full collection (fewer, shorter pauses under load).
        gc.collect()
        gc.freeze()
        # Requests free what they allocate by reference counting; at the default gen0
        # threshold (700) the collector still ran every few requests, re-traversing the
        # in-flight ones: 5-6% of a busy worker's CPU, measured. Every 10,000 net
        # allocations it is under 1%, and cyclic garbage still goes within a fraction of
        # a second under load.
        thresholds = gc.get_threshold()
        gc.set_threshold(GC_GEN0_THRESHOLD, *thresholds[1:])
        try:
            yield
        finally:
            await mcp.aclose()
            await gateway.aclose()
            gc.set_threshold(*thresholds)
            gc.unfreeze()

    ops = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/admin/reload", reload, methods=["POST"]),
            Route("/admin/audit", audit),
            Mount("/console", app=build_console(gateway)),
        ],
        lifespan=lifespan,
    )

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await proxy(scope, receive, send)
        elif scope["type"] == "http" and scope["path"].startswith(MCP_PREFIX):
            await mcp(scope, receive, send)  # /mcp/<server name>
        elif scope["type"] == "http" and scope["path"] == "/metrics":
            await gateway.metrics.asgi(scope, receive, send)
        else:
            await ops(scope, receive, send)

    app.gateway = gateway  # type: ignore[attr-defined]
    return app


CONFIG_ENV = "SAFEGUARD_GATEWAY_CONFIG"


def app_from_env() -> Any:
    """Factory for `uvicorn --factory` and multi-worker serving: config path from the env."""
    return build_app(load_config(os.environ.get(CONFIG_ENV, "config/gateway.yaml")))
