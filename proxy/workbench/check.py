"""`safeguard-gateway classifier check`: is the model server answering usably, per policy?

For each policy a route uses (enforced or shadow, input or output), one known-violating
and one known-safe example from the policy's own EXAMPLES section go to the classifier
the config names, with the same request the gateway sends. Reported per policy: whether
each answer parsed, the verdicts against the expected labels, whether reasoning came
back, the latency and the response shape seen (which runtime format). Any failure exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from proxy.config import Config, load_config
from proxy.guard.safeguard import ClassifierError, SafeguardClient
from proxy.policies import Policy, load_policies
from proxy.workbench.lint import labeled_examples

DEFAULT_CONFIG = "config/gateway.yaml"


@dataclass
class Probe:
    expected: int  # 1: the violating example, 0: the safe one
    content: str
    got: int | None = None
    reasoning: bool = False
    latency_ms: float = 0.0
    shape: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.got == self.expected


@dataclass
class PolicyCheck:
    id: str
    routes: list[str]
    probes: list[Probe] = field(default_factory=list)
    problem: str | None = None  # no usable examples

    @property
    def ok(self) -> bool:
        return self.problem is None and all(p.ok for p in self.probes)


def routed_policies(config: Config, policies: dict[str, Policy]) -> dict[str, list[str]]:
    """Policy id -> the routes using it, in config order."""
    used: dict[str, list[str]] = {}
    for route in config.routes.values():
        sides = (route.input, route.output)
        for ref in (ref for side in sides for ref in (*side.policies, *side.shadow)):
            names = used.setdefault(ref.id, [])
            if route.name not in names:
                names.append(route.name)
    return {
        pid: routes
        for pid, routes in used.items()
        if pid in policies and not policies[pid].detectors_only  # these never ask the model
    }


def probes_for(policy: Policy) -> tuple[list[Probe], str | None]:
    examples = labeled_examples(policy.text)
    picked = {label: content for content, label in reversed(examples)}  # first of each
    missing = [name for label, name in ((1, "violating"), (0, "safe")) if label not in picked]
    if missing:
        return [], (
            f"no {' or '.join(missing)} example in EXAMPLES "
            "(`safeguard-gateway policy lint` shows the format)"
        )
    return [Probe(1, picked[1]), Probe(0, picked[0])], None


async def run_checks(
    client: SafeguardClient, policies: dict[str, Policy], used: dict[str, list[str]]
) -> tuple[list[PolicyCheck], str | None]:
    """The checks, or (those done, the reason the run stopped) when the server is down."""
    checks: list[PolicyCheck] = []
    for pid, routes in used.items():
        check = PolicyCheck(pid, routes)
        check.probes, check.problem = probes_for(policies[pid])
        checks.append(check)
        for probe in check.probes:
            started = time.perf_counter()
            try:
                answer = await client.ask(policies[pid], probe.content)
            except ClassifierError as exc:
                probe.error = str(exc)
                if exc.kind in ("unreachable", "timeout"):
                    return checks, str(exc)
            else:
                probe.got = int(answer.violation)
                probe.reasoning = bool(answer.reasoning)
                probe.shape = answer.shape
            probe.latency_ms = (time.perf_counter() - started) * 1000
    return checks, None


def render(checks: list[PolicyCheck], stopped: str | None, where: str) -> str:
    lines = [where]
    if stopped:
        hint = "start it (README: Where the model runs) or fix classifier.base_url"
        return "\n".join([*lines, f"FAIL  classifier unreachable: {stopped}; {hint}"])
    for check in checks:
        if check.problem:
            lines.append(f"FAIL  {check.id} ({', '.join(check.routes)}): {check.problem}")
            continue
        verdicts = "  ".join(_verdict(p) for p in check.probes)
        reasoning = "yes" if all(p.reasoning for p in check.probes) else "no"
        latency = " / ".join(f"{p.latency_ms:.0f}" for p in check.probes)
        shapes = ", ".join(sorted({p.shape for p in check.probes if p.shape})) or "-"
        lines.append(
            f"{'ok  ' if check.ok else 'FAIL'}  {check.id} ({', '.join(check.routes)}): "
            f"{verdicts}  reasoning: {reasoning}  latency: {latency} ms  shape: {shapes}"
        )
        lines += [f"      {p.content[:60]!r}: {p.error}" for p in check.probes if p.error]
    failed = sum(not c.ok for c in checks)
    lines.append(f"{len(checks)} policies checked, {failed} failed")
    return "\n".join(lines)


def _verdict(probe: Probe) -> str:
    name = "violating" if probe.expected else "safe"
    if probe.error:
        return f"{name}: unparsed"
    mark = "" if probe.got == probe.expected else f" (expected {probe.expected})"
    return f"{name}: {probe.got}{mark}"


def document(checks: list[PolicyCheck], stopped: str | None, config: Config) -> dict[str, Any]:
    c = config.classifier
    return {
        "ok": stopped is None and all(check.ok for check in checks),
        "classifier": {"base_url": c.base_url, "model": c.model, "runtime": c.runtime},
        "stopped": stopped,
        "policies": [
            {
                "id": check.id,
                "routes": check.routes,
                "ok": check.ok,
                "problem": check.problem,
                "probes": [asdict(p) | {"ok": p.ok} for p in check.probes],
            }
            for check in checks
        ],
    }


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    policies = load_policies(config.policies_dir)
    used = routed_policies(config, policies)
    c = config.classifier
    where = f"classifier {c.base_url} (runtime {c.runtime}, model {c.model})"
    if not used:
        print(f"{where}\nno route uses a policy that asks the model: nothing to check")
        return 0
    client = SafeguardClient.from_config(c)

    async def run() -> tuple[list[PolicyCheck], str | None]:
        try:
            return await run_checks(client, policies, used)
        finally:
            await client.aclose()

    checks, stopped = asyncio.run(run())
    doc = document(checks, stopped, config)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render(checks, stopped, where))
    sys.stdout.flush()
    return 0 if doc["ok"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    classifier = subparsers.add_parser(
        "classifier", help="check the classifier", description="Check the model server."
    )
    commands = classifier.add_subparsers(dest="classifier_command", metavar="{check}")
    commands.required = True
    check = commands.add_parser(
        "check",
        help="send each routed policy a violating and a safe example from its EXAMPLES",
        description="For every policy a route uses, send the classifier a known-violating "
        "and a known-safe example from the policy's EXAMPLES section and report whether "
        "the answer parsed, the verdicts, the reasoning, the latency and the runtime's "
        "response shape. Exit 1 on any failure, 2 on config errors.",
    )
    check.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})"
    )
    check.add_argument("--json", action="store_true", help="one JSON document on stdout")
    check.set_defaults(func=cmd_check)
