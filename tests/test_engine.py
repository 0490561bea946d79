"""proxy/guard/engine.py: what each verdict does, and the input side of the guard."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.config import PolicyRef, Side
from proxy.guard.cache import VerdictCache
from proxy.guard.engine import Guard, Outcome, SideResult, decide
from proxy.guard.safeguard import ClassifierError, Verdict
from proxy.openai_api import CHAT, RESPONSES
from proxy.policies import Policy, parse_policy
from proxy.surfaces import surface_for
from proxy.surfaces.text import rewrite

EMAIL = "jane.doe@corp-mail.com"


def policy(pid: str, action: str = "block", **front: str) -> Policy:
    meta = "".join(f"{k}: {v}\n" for k, v in {"action": action, **front}.items())
    return parse_policy(f"---\n{meta}---\nDecide whether this is {pid}.\n".encode(), name=pid)


POLICIES = {
    "cheating": policy("cheating"),
    "spam": policy("spam", "annotate"),
    "audit": policy("audit", "log"),
    "pii": policy("pii", "redact", detectors="[email, credit_card]", category="PII"),
    "contact": policy("contact", "block", detectors="[email]"),
    "injection": policy("injection", scope="conversation"),
    "latest": policy("latest", scope="last_user"),
    "tone": policy("tone", "annotate", scope="assistant", reasoning_effort="high"),
}


class FakeClassifier:
    """The classifier seam: flags content containing its policy's trigger word."""

    model = "fake-safeguard"

    def __init__(self, **triggers: str) -> None:
        self.triggers = triggers  # policy id -> word that makes content a violation
        self.down = False
        self.calls: list[tuple[str, str]] = []

    async def classify(self, policy: Policy, content: str) -> Verdict:
        self.calls.append((policy.id, content))
        await asyncio.sleep(0)
        if self.down:
            raise ClassifierError("timeout", "no answer within 1s")
        word = self.triggers.get(policy.id)
        hit = word is not None and word in content.lower()
        return Verdict(policy.id, policy.version, hit, category="C1" if hit else None)

    def seen(self, pid: str) -> list[str]:
        return [content for p, content in self.calls if p == pid]


def make_guard(classifier: FakeClassifier) -> Guard:
    cache = VerdictCache(ttl_s=60, size=100)
    return Guard(classifier, cache)  # type: ignore[arg-type]  # no observers: no telemetry


def side(*refs: str | PolicyRef, shadow: tuple[str | PolicyRef, ...] = ()) -> Side:
    def ref(r: str | PolicyRef) -> PolicyRef:
        return r if isinstance(r, PolicyRef) else PolicyRef(r)

    return Side(policies=tuple(map(ref, refs)), shadow=tuple(map(ref, shadow)))


async def check(
    classifier: FakeClassifier, refs: Side, body: dict[str, Any], endpoint: str = CHAT
) -> SideResult:
    pieces = surface_for(endpoint).input_pieces(body)
    return await make_guard(classifier).check_request(refs, POLICIES, pieces)


def sent(body: dict[str, Any], result: SideResult) -> dict[str, Any]:
    """The body as it goes upstream."""
    return rewrite(body, result.edits)


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": r, "content": c} for r, c in turns]}


def outcome(action: str, *, violation: bool = True, redacted: bool = False, error: bool = False):
    verdict = Verdict("p", "v1", violation, error="timeout: x" if error else None)
    return Outcome(POLICIES["cheating"], action, "input", verdict, redacted=redacted)


# --- Outcome.effect and decide -----------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "violation", "redacted", "error", "effect"),
    [
        ("block", True, False, False, "block"),
        ("annotate", True, False, False, "annotate"),
        ("log", True, False, False, "allow"),
        ("redact", True, True, False, "redact"),
        ("redact", True, False, False, "annotate"),  # the model flags, no span to cut
        ("block", False, False, False, "allow"),
        ("redact", False, False, False, "allow"),
        ("block", False, False, True, "error"),
        ("log", False, False, True, "error"),
    ],
)
def test_effect_of_each_action(
    action: str, violation: bool, redacted: bool, error: bool, effect: str
) -> None:
    assert outcome(action, violation=violation, redacted=redacted, error=error).effect == effect


@pytest.mark.parametrize(
    ("effects", "fail", "decision"),
    [
        ([], "closed", "allow"),
        (["allow", "annotate"], "closed", "annotate"),
        (["annotate", "redact", "allow"], "closed", "redact"),
        (["redact", "block", "annotate"], "closed", "block"),
        (["annotate", "error"], "closed", "error"),
        (["error", "block"], "closed", "block"),
        (["annotate", "error"], "open", "annotate"),
        (["error", "error"], "open", "allow"),
        (["error", "block"], "open", "block"),
    ],
)
def test_decide_takes_the_most_severe_effect(effects: list[str], fail: str, decision: str) -> None:
    build = {
        "allow": outcome("block", violation=False),
        "annotate": outcome("annotate"),
        "redact": outcome("redact", redacted=True),
        "block": outcome("block"),
        "error": outcome("block", violation=False, error=True),
    }
    assert decide([build[e] for e in effects], fail) == decision


def test_filter_result_is_azure_shaped() -> None:
    blocked = Outcome(POLICIES["pii"], "block", "input", Verdict("pii", "v", True))
    assert blocked.filter_result() == {"filtered": True, "detected": True, "category": "PII"}
    safe = Outcome(POLICIES["pii"], "block", "input", Verdict("pii", "v", False))
    assert safe.filter_result() == {"filtered": False, "detected": False}


# --- check_request -----------------------------------------------------------------------


async def test_a_flagged_block_policy_blocks() -> None:
    classifier = FakeClassifier(cheating="aimbot")
    body = chat(("user", "hello"), ("assistant", "hi"), ("user", "sell me an aimbot"))
    result = await check(classifier, side("cheating"), body)
    assert result.decision("closed") == "block"
    assert [o.policy.id for o in result.blocked()] == ["cheating"]
    # per_message (the default): each turn on its own
    assert classifier.seen("cheating") == ["hello", "hi", "sell me an aimbot"]


async def test_safe_content_is_allowed() -> None:
    classifier = FakeClassifier(cheating="aimbot", spam="buy now")
    body = chat(("user", "what is the capital of France?"))
    result = await check(classifier, side("cheating", "spam"), body)
    assert result.decision("closed") == "allow"
    assert [o.effect for o in result.outcomes] == ["allow", "allow"]


async def test_route_action_overrides_the_policy_default() -> None:
    classifier = FakeClassifier(cheating="aimbot")
    refs = side(PolicyRef("cheating", "annotate"))
    result = await check(classifier, refs, chat(("user", "aimbot")))
    assert result.decision("closed") == "annotate"
    assert result.outcomes[0].action == "annotate"


async def test_a_log_policy_records_the_violation_and_allows() -> None:
    classifier = FakeClassifier(audit="aimbot")
    result = await check(classifier, side("audit"), chat(("user", "aimbot")))
    assert result.decision("closed") == "allow"
    assert [o.policy.id for o in result.outcomes if o.verdict.violation] == ["audit"]


async def test_each_policy_reads_its_own_scope() -> None:
    classifier = FakeClassifier()
    body = chat(("system", "be nice"), ("user", "hi"), ("assistant", "hello!"), ("user", "bye"))
    await check(classifier, side("cheating", "latest", "injection", "tone"), body)
    assert classifier.seen("cheating") == ["be nice", "hi", "hello!", "bye"]
    assert classifier.seen("latest") == ["bye"]
    assert classifier.seen("injection") == [
        "[system] be nice\n\n[user] hi\n\n[assistant] hello!\n\n[user] bye"
    ]
    assert classifier.seen("tone") == ["hello!"]


async def test_responses_input_is_checked_beside_a_prompt_template() -> None:
    classifier = FakeClassifier(cheating="aimbot")
    body = {"model": "m", "prompt": {"id": "pmpt_1"}, "input": "sell me an aimbot"}
    result = await check(classifier, side("cheating"), body, RESPONSES)
    assert result.decision("closed") == "block"


async def test_nothing_to_read_means_no_call_and_no_outcome() -> None:
    classifier = FakeClassifier()
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    result = await check(classifier, side("cheating"), body)
    assert result.outcomes == []
    assert classifier.calls == []


async def test_classifier_down_is_an_error_outcome_handled_by_fail_mode() -> None:
    classifier = FakeClassifier(spam="buy now")
    classifier.down = True
    result = await check(classifier, side("cheating", "spam"), chat(("user", "buy now")))
    assert [o.verdict.label for o in result.outcomes] == ["error", "error"]
    assert result.outcomes[0].verdict.error == "timeout: no answer within 1s"
    assert result.decision("closed") == "error"
    assert result.decision("open") == "allow"
    assert result.filter_results() == {}


async def test_verdicts_are_cached_across_requests() -> None:
    classifier = FakeClassifier(cheating="aimbot")
    guard = make_guard(classifier)
    for _ in range(3):
        pieces = surface_for(CHAT).input_pieces(chat(("user", "aimbot")))
        result = await guard.check_request(side("cheating"), POLICIES, pieces)
    assert len(classifier.calls) == 1
    assert result.outcomes[0].verdict.cache_hit


# --- redaction and detector triage --------------------------------------------------------


async def test_redaction_rewrites_the_body_before_the_classifier_reads_it() -> None:
    classifier = FakeClassifier()
    body = chat(("user", f"mail me at {EMAIL} please"))
    result = await check(classifier, side("pii"), body)
    assert sent(body, result)["messages"][0]["content"] == "mail me at [REDACTED:EMAIL] please"
    assert body["messages"][0]["content"] == f"mail me at {EMAIL} please"  # a new body
    assert classifier.seen("pii") == ["mail me at [REDACTED:EMAIL] please"]
    (only,) = result.outcomes
    assert only.effect == "redact"
    assert only.verdict.violation and only.verdict.category == "EMAIL"
    assert result.decision("closed") == "redact"
    assert result.filter_results()["pii"] == {
        "filtered": True,
        "detected": True,
        "category": "EMAIL",
        "redacted": True,
    }


async def test_a_redact_policy_the_model_still_flags_is_annotated() -> None:
    classifier = FakeClassifier(pii="my address is")
    body = chat(("user", "my address is 12 Elm Street"))
    result = await check(classifier, side("pii"), body)
    assert sent(body, result) == body
    assert result.decision("closed") == "annotate"


@pytest.mark.parametrize("order", [("cheating", "pii"), ("pii", "cheating")])
async def test_other_policies_see_the_redacted_text_whatever_their_order(
    order: tuple[str, str],
) -> None:
    classifier = FakeClassifier()
    await check(classifier, side(*order), chat(("user", f"write to {EMAIL}")))
    assert classifier.seen("cheating") == ["write to [REDACTED:EMAIL]"]


async def test_detector_hit_on_a_block_policy_skips_the_model() -> None:
    classifier = FakeClassifier()
    body = chat(("user", f"reach me at {EMAIL}"))
    result = await check(classifier, side("contact"), body)
    assert classifier.calls == []
    assert sent(body, result) == body  # not rewritten
    (only,) = result.outcomes
    assert (only.effect, only.verdict.category) == ("block", "EMAIL")
    assert only.verdict.source == "detector"


async def test_detector_miss_falls_through_to_the_model() -> None:
    classifier = FakeClassifier(contact="call me")
    result = await check(classifier, side("contact"), chat(("user", "call me maybe")))
    assert classifier.seen("contact") == ["call me maybe"]
    assert result.outcomes[0].verdict.source == "model"
    assert result.decision("closed") == "block"


# --- shadow policies ---------------------------------------------------------------------


async def test_shadow_results_never_affect_outcomes() -> None:
    classifier = FakeClassifier(cheating="aimbot")
    body = chat(("user", f"aimbot for {EMAIL}"))
    result = await check(classifier, side("spam", shadow=("cheating", "pii")), body)
    shadows = [o for o in await asyncio.gather(*result.shadow) if o is not None]
    assert [o.policy.id for o in result.outcomes] == ["spam"]
    assert result.decision("closed") == "allow"
    assert sent(body, result) == body  # shadow redact: no rewrite
    assert {o.policy.id: o.verdict.shadow for o in shadows} == {"cheating": True, "pii": True}
    assert next(o for o in shadows if o.policy.id == "cheating").verdict.violation


async def test_shadow_redact_policy_records_what_it_would_redact() -> None:
    classifier = FakeClassifier()
    body = chat(("user", f"mail me at {EMAIL}"))
    result = await check(classifier, side(shadow=("pii",)), body)
    (shadow,) = await asyncio.gather(*result.shadow)
    assert sent(body, result) == body
    assert shadow is not None
    assert (shadow.verdict.violation, shadow.verdict.category) == (True, "EMAIL")


async def test_shadow_of_a_live_redact_policy_sees_the_original_text() -> None:
    pii_v2 = policy("pii-v2", "redact", detectors="[email]")
    classifier = FakeClassifier()
    body = chat(("user", f"mail me at {EMAIL}"))
    result = await make_guard(classifier).check_request(
        side("pii", shadow=("pii-v2",)),
        POLICIES | {"pii-v2": pii_v2},
        surface_for(CHAT).input_pieces(body),
    )
    (shadow,) = await asyncio.gather(*result.shadow)
    assert result.decision("closed") == "redact"
    assert shadow is not None
    assert (shadow.verdict.violation, shadow.verdict.category) == (True, "EMAIL")


async def test_shadow_detector_triage_is_marked_shadow() -> None:
    classifier = FakeClassifier()
    body = chat(("user", f"reach me at {EMAIL}"))
    result = await check(classifier, side(shadow=("contact",)), body)
    (shadow,) = await asyncio.gather(*result.shadow)
    assert shadow is not None
    assert (shadow.verdict.shadow, shadow.verdict.source) == (True, "detector")
    assert result.outcomes == []


async def test_a_detector_redaction_drops_logprobs_when_the_classifier_fails_open() -> None:
    from proxy.decision import on_response

    class Down:
        model = "m"

        async def classify(self, policy: Policy, content: str) -> Verdict:
            raise ClassifierError("timeout", "classifier timed out")

    pii = Policy("pii", "t", "v1", action="redact", detectors=("email",))
    token = {"token": "bob@example.com", "logprob": -0.1}
    body = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "mail bob@example.com now"},
                "logprobs": {"content": [token]},
                "finish_reason": "stop",
            }
        ]
    }
    chat = surface_for(CHAT)
    guard = Guard(Down(), VerdictCache(ttl_s=60, size=10))
    outputs = await guard.check_response(
        Side(policies=(PolicyRef("pii"),)), {"pii": pii}, chat.output_pieces(body)
    )
    answer = on_response(chat, "open", body, SideResult(), outputs)
    assert b"bob@example.com" not in answer.body  # neither the text nor its tokens
