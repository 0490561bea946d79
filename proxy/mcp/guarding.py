"""The route's MCP policies over one message: tool-call arguments on the way in, tool
results, resource contents, prompts and tool definitions on the way out.

Each check runs the side's policies through the gateway's `Guard` (verdict cache,
coalescing, detectors, shadow policies) over slots into the raw JSON, so a redacting
policy rewrites the text in place. The text is classified after a short line saying
what it is (a tool's result, a tool's definition): the policy reads it as untrusted
data, and the line is part of the cache key, so identical content in another role is
not confused with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config import Side
from proxy.guard.engine import Guard, Outcome, SideResult, decide
from proxy.mcp import messages as m
from proxy.openai_api import Slot
from proxy.policies import Policy

_WHAT = {
    m.INITIALIZE: "Instructions from the tool server:\n",
    m.DISCOVER: "Instructions from the tool server:\n",
    m.TOOLS_CALL: "Result of tool '{tool}':\n",
    m.RESOURCES_READ: "Contents of a resource read from the tool server:\n",
    m.PROMPTS_GET: "Prompt template from the tool server:\n",
}


@dataclass(slots=True)
class Check:
    """What one check found: the outcomes, the decision, and for tools/list the tools
    dropped (name -> why)."""

    result: SideResult
    decision: str
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def flagged(self) -> list[str]:
        """Policies whose verdict blocks."""
        return sorted({o.policy.id for o in self.result.blocked()})


ALLOWED = Check(SideResult(), "allow")


class McpGuard:
    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    async def _run(
        self,
        side: Side,
        policies: Mapping[str, Policy],
        choices: list[list[Slot]],
        context: str,
        side_name: str,
    ) -> SideResult:
        result = await self.guard.check_completion(side, policies, choices, context)
        for outcome in result.outcomes:
            outcome.side = side_name
        return result

    async def text(
        self,
        side: Side,
        policies: Mapping[str, Policy],
        fail: str,
        slots: list[Slot],
        context: str,
        side_name: str = "input",
    ) -> Check:
        """What one message carries (redacted in place): a client's to the server on the
        input side, a server's request to the client on the output side."""
        if not side.guarded or not slots:
            return ALLOWED
        result = await self._run(side, policies, [slots], context, side_name)
        return Check(result, result.decision(fail))

    async def result(
        self,
        side: Side,
        policies: Mapping[str, Policy],
        fail: str,
        method: str,
        tool: str | None,
        slots: list[Slot],
    ) -> Check:
        """A tool result, resource contents or prompt (its `result_slots`) before the
        client sees them."""
        if not side.guarded or not slots:
            return ALLOWED
        context = _WHAT[method].format(tool=tool)
        outcome = await self._run(side, policies, [slots], context, "output")
        return Check(outcome, outcome.decision(fail))

    async def tools(
        self, side: Side, policies: Mapping[str, Policy], fail: str, tools: list[Any]
    ) -> Check:
        """Each tool definition of a `tools/list`: a flagged one (or, failing closed, an
        unchecked one) is dropped from the list."""
        per_tool = m.tool_slots(tools)
        if not side.guarded or not any(per_tool):
            return ALLOWED
        result = await self._run(side, policies, per_tool, "Tool definition:\n", "output")
        by_tool: dict[int, list[Outcome]] = {}
        for outcome in result.outcomes:
            by_tool.setdefault(outcome.choice or 0, []).append(outcome)
            tool = tools[outcome.choice or 0]
            outcome.tool = str(tool.get("name")) if isinstance(tool, dict) else None
        dropped: dict[str, str] = {}
        for index, outcomes in by_tool.items():
            verdict = decide(outcomes, fail)
            if verdict in ("block", "error"):
                name = tools[index].get("name") if isinstance(tools[index], dict) else None
                why = sorted({o.policy.id for o in outcomes if o.effect == verdict})
                dropped[str(name)] = (
                    f"flagged by {m.named(why)}" if verdict == "block" else "guard unavailable"
                )
        kept_decision = decide([o for o in result.outcomes if o.effect != "block"], fail)
        return Check(result, "block" if dropped else kept_decision, dropped)
