"""The gateway's long-lived state: config, tenancy, policies, and one seam per service.

A reload swaps the policies and the config's tenants and routes (shadow lists included)
together, in one step of the event loop: a request takes `gateway.policies` once and keeps
that mapping to the end, so a reload never mixes two policy sets in one decision. A new
set is checked whole first (`load_set`); a broken one keeps the current set. Under
`server.workers: N` the fleet supervisor (proxy.fleet) loads and checks the set once and
hands it to every worker (`apply`); `link` is then the worker's line to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from proxy.audit import AuditLog
from proxy.config import Config, ConfigError, load_config
from proxy.guard.cache import VerdictCache
from proxy.guard.engine import Guard
from proxy.guard.observers import GuardObserver, MetricsObserver, SpanObserver
from proxy.guard.safeguard import SafeguardClient
from proxy.guard.shared_cache import SharedCache
from proxy.metrics import Metrics
from proxy.policies import Policy, PolicyError, load_policies
from proxy.recorder import Recorder
from proxy.telemetry import Telemetry
from proxy.tenancy import Tenancy
from proxy.upstream import UpstreamPool

log = logging.getLogger("proxy")


def check_policies(config: Config, policies: Mapping[str, Policy]) -> None:
    """Every route names loaded policies, and parallel input never meets a redacting one."""
    for route in config.routes.values():
        sides = [("input", route.input), ("output", route.output)]
        sides += [("mcp.input", route.mcp.input), ("mcp.output", route.mcp.output)]
        for side_name, side in sides:
            key = f"routes.{route.name}.{side_name}"
            for field, refs in (("policies", side.policies), ("shadow", side.shadow)):
                for ref in refs:
                    if ref.id not in policies:
                        raise ConfigError(f"{key}.{field}", f"no policy {ref.id!r} in policies_dir")
            if side_name == "input" and side.mode == "parallel":
                for ref in side.policies:
                    if (ref.action or policies[ref.id].action) == "redact":
                        raise ConfigError(
                            f"{key}.mode",
                            f"policy {ref.id!r} redacts, which needs mode: sequential",
                        )


# What a reload may change; anything else in the config needs a restart.
RELOADABLE = ("tenants", "routes", "policies_dir", "source", "mcp_servers")


def load_set(path: str, current: Config | None = None) -> tuple[Config, Mapping[str, Policy]]:
    """Read and check a config file and its policies as one set (raises ConfigError or
    PolicyError); with `current`, also that it changes only what a reload can apply."""
    config = load_config(path)
    policies = load_policies(config.policies_dir)
    check_policies(config, policies)
    if current is not None:
        changed = [
            f.name
            for f in dataclasses.fields(config)
            if f.name not in RELOADABLE and getattr(config, f.name) != getattr(current, f.name)
        ]
        if changed:
            raise ConfigError(
                changed[0],
                "changed; a reload applies tenants, routes, MCP servers and policies only: "
                "restart the gateway to apply it",
            )
    return config, policies


def describe_change(old: Mapping[str, Policy], new: Mapping[str, Policy]) -> str:
    changed = sorted(
        pid
        for pid in set(old) | set(new)
        if (old.get(pid) or _absent).version != (new.get(pid) or _absent).version
    )
    return f"{len(new)} policies loaded; changed: {', '.join(changed) or 'none'}"


def set_id(config: Config, policies: Mapping[str, Policy]) -> str:
    """A short digest naming a config-and-policies set (the same on every worker)."""
    digest = hashlib.sha256(repr((config.tenants, config.routes)).encode())
    for pid in sorted(policies):
        digest.update(f"{pid}={policies[pid].version};".encode())
    return digest.hexdigest()[:12]


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        span_exporter: Any = None,
        classifier: SafeguardClient | None = None,
        policies: Mapping[str, Policy] | None = None,
        link: Any = None,
    ) -> None:
        self.config = config
        self.tenancy = Tenancy(config)
        self.policies: Mapping[str, Policy] = (
            load_policies(config.policies_dir) if policies is None else policies
        )
        check_policies(config, self.policies)
        self.link = link  # proxy.fleet.worker.WorkerLink under server.workers > 1
        self.upstreams = UpstreamPool(config.upstreams)
        c = config.classifier
        self.classifier = classifier or SafeguardClient.from_config(c)
        # Audit writes and span export run in a recorder process, off the event loop's GIL.
        audit_on = config.audit.enabled
        spans_out = span_exporter is None and config.telemetry.traces == "otlp"
        self.recorder = Recorder(config, audit=audit_on, spans=spans_out)
        self.telemetry = Telemetry(
            config.telemetry,
            exporter=span_exporter,
            sink=self.recorder if spans_out else None,
            classifier_url=c.base_url,
        )
        self.metrics = Metrics(config.telemetry)
        self.shared_cache = (
            SharedCache(c.cache_url, ttl_s=c.cache_ttl_s, claim_s=c.timeout_s)
            if c.cache_url
            else None
        )
        self.cache = VerdictCache(ttl_s=c.cache_ttl_s, size=c.cache_size, shared=self.shared_cache)
        if self.shared_cache is not None:
            self.metrics.watch_shared_cache(self.shared_cache)
        observers: list[GuardObserver] = [MetricsObserver(self.metrics)]
        if self.telemetry.enabled:
            observers.append(SpanObserver(self.telemetry))
        self.guard = Guard(self.classifier, self.cache, observers)
        self.audit: AuditLog | Recorder = self.recorder if audit_on else AuditLog(config.audit)
        self._background: set[asyncio.Task[Any]] = set()
        self.metrics.watch_audit(self.audit.stats)
        if spans_out:
            self.metrics.watch_spans(self.recorder.span_stats)

    @property
    def uses_classifier(self) -> bool:
        """Any routed policy that asks the model (detectors-only policies never do)."""
        return any(
            not self.policies[ref.id].detectors_only
            for route in self.config.routes.values()
            for side in (route.input, route.output, route.mcp.input, route.mcp.output)
            for ref in (*side.policies, *side.shadow)
            if ref.id in self.policies
        )

    def apply(self, config: Config, policies: Mapping[str, Policy]) -> str:
        """Swap in a checked set (tenants, routes, policies) in one step; what changed."""
        detail = describe_change(self.policies, policies)
        self.config = dataclasses.replace(
            self.config, **{name: getattr(config, name) for name in RELOADABLE}
        )
        self.tenancy = Tenancy(self.config)
        self.policies = policies
        return detail

    def reload_local(self) -> tuple[bool, str]:
        """Load the config file (or, for a config not read from a file, policies_dir) and
        its policies anew; on any error keep the current set and say why."""
        try:
            if self.config.source:
                config, policies = load_set(self.config.source, self.config)
            else:
                config, policies = self.config, load_policies(self.config.policies_dir)
                check_policies(config, policies)
        except (PolicyError, ConfigError) as exc:
            log.error("reload failed, keeping the previous config and policies: %s", exc)
            return False, str(exc)
        detail = self.apply(config, policies)
        log.info("reloaded: %s", detail)
        return True, detail

    reload_policies = reload_local  # the name before config reload

    async def reload(self) -> tuple[bool, str]:
        """Reload everywhere: this process, or every worker of the fleet through its
        supervisor (which checks the set once and reports a broken one once)."""
        if self.link is not None:
            return await self.link.reload()
        return self.reload_local()

    @property
    def set_id(self) -> str:
        return set_id(self.config, self.policies)

    async def start(self) -> None:
        await self.recorder.start()
        self.metrics.start()
        if self.link is not None:
            await self.link.start(self)

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        """Readiness of the whole server: every worker's, under a fleet supervisor."""
        if self.link is not None:
            return await self.link.ready()
        return await self.ready_local()

    async def ready_local(self) -> tuple[bool, dict[str, Any]]:
        upstreams = await self.upstreams.ready()
        checks: dict[str, Any] = {"upstreams": upstreams}
        ok = all(v == "ok" for v in upstreams.values())
        if self.uses_classifier:
            # Public: no address here (/readyz needs no key); app.readyz logs where.
            classifier_ok, detail = await self.classifier.ready()
            checks["classifier"] = detail
            if not classifier_ok:
                checks["classifier"] += (
                    "; diagnose with `safeguard-gateway classifier check --config PATH`"
                )
                if self.guards_fail_open():
                    checks["classifier"] += "; every guarded route fails open"
                else:
                    ok = False
        audit_ok, audit_detail = self.audit.health()
        checks["audit"] = audit_detail
        return ok and audit_ok, checks

    def guards_fail_open(self) -> bool:
        """Every guarded route answers without the classifier (`fail: open`)."""
        return all(
            route.fail == "open"
            for route in self.config.routes.values()
            if route.input.guarded or route.output.guarded
        )

    def in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run work that must finish before shutdown but not before the response."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        if self.link is not None:
            self.link.close()
        if self._background:
            await asyncio.wait(self._background, timeout=self.config.classifier.timeout_s + 1)
        await self.recorder.close()  # ships what is left, waits for the recorder to store it
        self.telemetry.shutdown()
        await self.upstreams.aclose()
        await self.classifier.aclose()
        if self.shared_cache is not None:
            await self.shared_cache.aclose()
        self.metrics.shutdown()


class _Absent:
    version = None


_absent = _Absent()
