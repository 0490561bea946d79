"""The gateway's long-lived state: config, tenancy, policies, and one seam per service.

Policies are swapped atomically: a request takes `gateway.policies` once and keeps that
mapping to the end, so a reload never mixes two policy sets in one decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from proxy.audit import AuditLog
from proxy.config import Config, ConfigError
from proxy.guard.cache import VerdictCache
from proxy.guard.engine import Guard
from proxy.guard.safeguard import SafeguardClient
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
        for side_name, side in (("input", route.input), ("output", route.output)):
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


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        span_exporter: Any = None,
        classifier: SafeguardClient | None = None,
    ) -> None:
        self.config = config
        self.tenancy = Tenancy(config)
        self.policies: Mapping[str, Policy] = load_policies(config.policies_dir)
        check_policies(config, self.policies)
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
        self.cache = VerdictCache(ttl_s=c.cache_ttl_s, size=c.cache_size)
        self.guard = Guard(self.classifier, self.cache, self.telemetry, self.metrics)
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
            for side in (route.input, route.output)
            for ref in (*side.policies, *side.shadow)
            if ref.id in self.policies
        )

    def reload_policies(self) -> tuple[bool, str]:
        """Load policies_dir anew; on any error keep the current set and say why."""
        try:
            policies = load_policies(self.config.policies_dir)
            check_policies(self.config, policies)
        except (PolicyError, ConfigError) as exc:
            log.error("policy reload failed, keeping the previous policies: %s", exc)
            return False, str(exc)
        changed = sorted(
            pid
            for pid in set(policies) | set(self.policies)
            if (self.policies.get(pid) or _absent).version != (policies.get(pid) or _absent).version
        )
        self.policies = policies
        log.info(
            "policies reloaded: %d loaded, changed: %s", len(policies), ", ".join(changed) or "none"
        )
        return True, f"{len(policies)} policies loaded; changed: {', '.join(changed) or 'none'}"

    async def start(self) -> None:
        await self.recorder.start()
        self.metrics.start()

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        upstreams = await self.upstreams.ready()
        checks: dict[str, Any] = {"upstreams": upstreams}
        ok = all(v == "ok" for v in upstreams.values())
        if self.uses_classifier:
            classifier_ok, detail = await self.classifier.ready()
            where = self.config.classifier.base_url
            checks["classifier"] = (
                detail
                if classifier_ok
                else f"{detail}: gpt-oss-safeguard not reachable at {where}; diagnose with "
                f"`safeguard-gateway classifier check --config {self.config.source or 'PATH'}`"
            )
            ok = ok and classifier_ok
        audit_ok, audit_detail = self.audit.health()
        checks["audit"] = audit_detail
        return ok and audit_ok, checks

    def in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run work that must finish before shutdown but not before the response."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=self.config.classifier.timeout_s + 1)
        await self.recorder.close()  # ships what is left, waits for the recorder to store it
        self.telemetry.shutdown()
        await self.upstreams.aclose()
        await self.classifier.aclose()
        self.metrics.shutdown()


class _Absent:
    version = None


_absent = _Absent()
