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

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config import Side
from proxy.exchange import Exchange
from proxy.guard.engine import Guard, Outcome, SideResult, decide, worse
from proxy.mcp import messages as m
from proxy.openai_api import Slot
from proxy.policies import Policy

_WHAT = {
    m.INITIALIZE: "Instructions from the tool server:\n",
    m.DISCOVER: "Instructions from the tool server:\n",
    m.TOOLS_CALL: "Result of tool '{tool}':\n",
    m.RESOURCES_READ: "Contents of a resource read from the tool server:\n",
    m.PROMPTS_GET: "Prompt template from the tool server:\n",
    m.COMPLETE: "Completions suggested by the tool server:\n",
    "error": "Error message from the tool server:\n",
    "notification": "Notification from the tool server ({tool}):\n",
    "request": "Request from the tool server to the client ({tool}):\n",
    "server": "The tool server's description of itself:\n",
}
_ANY = "Message from the tool server:\n"


@dataclass(slots=True)
class Check:
    """What one check found: the outcomes and the decision."""

    result: SideResult
    decision: str

    @property
    def flagged(self) -> list[str]:
        """Policies whose verdict blocks (or redacts, where that withholds: `_decided`)."""
        blocked = self.result.blocked()
        if not blocked and self.decision == "block":
            blocked = [o for o in self.result.outcomes if o.effect == "redact"]
        return sorted({o.policy.id for o in blocked})


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
        """What one message carries (redacted in place), classified after `context`."""
        if not side.guarded or not slots:
            return ALLOWED
        result = await self._run(side, policies, [slots], context, side_name)
        return Check(result, _decided(result.decision(fail), slots))

    async def result(
        self,
        side: Side,
        policies: Mapping[str, Policy],
        fail: str,
        method: str | None,
        tool: str | None,
        slots: list[Slot],
    ) -> Check:
        """A server's result, error or notification (its slots) before the client sees
        it, introduced by what it is (`method` None: a result whose request is unknown)."""
        context = _WHAT.get(method or "", _ANY).format(tool=tool)
        return await self.text(side, policies, fail, slots, context, "output")

    async def items(
        self,
        side: Side,
        policies: Mapping[str, Policy],
        fail: str,
        method: str,
        items: list[Any],
        rest: list[Slot],
    ) -> tuple[Check, dict[int, str]]:
        """Each item of a listing (`m.LISTS`), and the `rest` of the result as one more:
        the ones to drop (index -> why), flagged or, failing closed, unchecked. The
        check's decision is the kept items' own."""
        per_item = [*m.item_slots(items), rest]
        if not side.guarded or not any(per_item):
            return ALLOWED, {}
        context = m.LISTS[method][1]
        result = await self._run(side, policies, per_item, context, "output")
        by_item: dict[int, list[Outcome]] = {}
        for outcome in result.outcomes:
            index = outcome.choice or 0
            by_item.setdefault(index, []).append(outcome)
            item = items[index] if index < len(items) else None
            outcome.tool = str(item.get("name")) if isinstance(item, dict) else None
        dropped: dict[int, str] = {}
        for index, outcomes in by_item.items():
            verdict = _decided(decide(outcomes, fail), per_item[index])
            if verdict in ("block", "error"):
                effects = (verdict, "redact") if verdict == "block" else (verdict,)
                why = sorted({o.policy.id for o in outcomes if o.effect in effects})
                dropped[index] = (
                    f"flagged by {m.named(why)}" if verdict == "block" else "guard unavailable"
                )
        kept_decision = decide([o for o in result.outcomes if o.effect != "block"], fail)
        return Check(result, "block" if dropped else kept_decision), dropped


def _decided(decision: str, slots: list[Slot]) -> str:
    """A redaction that would rewrite an object key blocks instead (keys stay as sent)."""
    return "block" if decision == "redact" and m.rewrites_a_key(slots) else decision


def note(ex: Exchange, check: Check, started: float, tool: str | None = None) -> None:
    """The check's verdicts onto the exchange (each naming the tool it is about)."""
    if tool is not None:
        for outcome in check.result.outcomes:
            outcome.tool = tool
    ex.add(check.result, (time.perf_counter() - started) * 1000)
    ex.decision = worse(ex.decision, check.decision)
