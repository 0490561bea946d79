"""The sans-io core: from what was asked and what the guard found, what to do.

Pure functions over immutable values; no sockets, clocks or telemetry. The handler
executes the result: forward the client's bytes as they are, forward a rewritten body,
answer an error, or send an answer with choices withheld.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

import orjson

from proxy.guard.engine import RANK, Outcome, SideResult
from proxy.openai_api import OpenAIError, bad_request
from proxy.shaping import content_filter_error, guard_unavailable
from proxy.surfaces.text import rewrite


# NamedTuples: immutable, and a third of a frozen dataclass's cost to build (one or two
# per guarded request).
class Forward(NamedTuple):
    """Send the request upstream: `body` is the rewritten (redacted) request, or None for
    the client's bytes exactly as they came."""

    decision: str
    body: bytes | None = None


class Refuse(NamedTuple):
    """Answer the client with this error; nothing (more) goes upstream."""

    decision: str
    error: OpenAIError


class Reply(NamedTuple):
    """Send this answer: redacted, annotated, `withheld` choices (or items) removed."""

    decision: str
    body: bytes
    withheld: frozenset[int] = frozenset()


_NONE: frozenset[int] = frozenset()


def on_request(
    surface: ModuleType, fail: str, body: dict[str, Any], inputs: SideResult
) -> Forward | Refuse:
    decision = inputs.decision(fail)
    if decision == "block":
        blocked = inputs.blocked()
        return Refuse(
            decision,
            content_filter_error(surface.PROMPT_PARAM, blocked, inputs.filter_results()),
        )
    if decision == "error":
        return Refuse(decision, guard_unavailable())
    if inputs.edits:
        try:
            return Forward(decision, orjson.dumps(rewrite(body, inputs.edits)))
        except orjson.JSONEncodeError:
            return Refuse("error", too_deep())
    return Forward(decision)


def on_response(
    surface: ModuleType,
    fail: str,
    body: dict[str, Any],
    inputs: SideResult,
    outputs: SideResult,
) -> Reply | Refuse:
    decision = outputs.decision(fail)
    if decision == "error":
        return Refuse(decision, guard_unavailable())
    answer = rewrite(body, outputs.edits) if outputs.edits else body
    withheld = _NONE
    if decision == "block":
        withheld = frozenset(o.choice for o in outputs.blocked() if o.choice is not None)
        answer = surface.withhold(answer, withheld)
    prompt = inputs.filter_results() if inputs.outcomes else None
    answer = surface.annotate(answer, prompt, per_choice(outputs.outcomes))
    try:
        return Reply(decision, orjson.dumps(answer), withheld)
    except orjson.JSONEncodeError:
        return Refuse(
            "error",
            OpenAIError(
                502,
                "The upstream's answer is nested too deeply for the output guard to rewrite.",
                type="server_error",
                code="upstream_invalid",
            ),
        )


def per_choice(outcomes: list[Outcome]) -> dict[int, dict[str, Any]]:
    """Filter results per choice; a choice's text and its tool calls are judged apart,
    and the most severe outcome per policy is the one shown."""
    worst: dict[int, dict[str, Outcome]] = {}
    for outcome in outcomes:
        choice = outcome.choice
        if choice is None or (outcome.verdict.error and not outcome.redacted):
            continue  # (a detector's redaction stands when the classifier failed open)
        mine = worst.get(choice)
        if mine is None:
            mine = worst[choice] = {}
        seen = mine.get(outcome.policy.id)
        if seen is None or RANK[outcome.effect] > RANK[seen.effect]:
            mine[outcome.policy.id] = outcome
    for mine in worst.values():
        for pid, outcome in mine.items():
            mine[pid] = outcome.filter_result()  # type: ignore[assignment]
    return worst  # type: ignore[return-value]


def too_deep() -> OpenAIError:
    return bad_request(
        "The request body is nested too deeply (over 255 levels) for the gateway to rewrite.",
        "invalid_request",
    )
