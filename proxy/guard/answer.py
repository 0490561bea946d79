"""Reading gpt-oss-safeguard's answer, whichever runtime served it.

The verdict is the model's final channel; its analysis channel is the reasoning, kept for
audit only. Runtimes put them in different places (see `read_answer`); an answer that is
unreadable, partial or ambiguous raises ClassifierError, and is never an allow.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import orjson


class ClassifierError(Exception):
    """The classifier could not give a usable verdict (down, timeout, garbage)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind  # timeout | unreachable | http_error | unparseable
        self.detail = detail


# Raw harmony text, as runtimes without a reasoning parser leave it in `content`: with the
# special tokens kept (llama.cpp) or dropped by the detokenizer ("analysis...assistantfinal").
_HARMONY_FINAL = re.compile(
    r"(?:assistantfinal|<\|channel\|>final(?:\s*<\|constrain\|>\w+)?<\|message\|>)(.*)$", re.S
)
_HARMONY_ANALYSIS = re.compile(
    r"^(?:<\|start\|>assistant)?(?:<\|channel\|>analysis<\|message\|>|analysis)(.*?)"
    r"(?:<\|end\|>|<\|start\|>|assistantfinal|<\|channel\|>final|$)",
    re.S,
)
_HARMONY_START = ("analysis", "<|channel|>", "<|start|>")
_THINK = re.compile(r"^<think>(.*?)</think>(.*)$", re.S)
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Answer:
    """A readable classifier answer and where in the response it was found."""

    violation: bool
    category: str | None
    rationale: str | None
    reasoning: str | None
    shape: str  # e.g. "content + reasoning_content" (SGLang), "content + reasoning" (vLLM)


def parse_verdict(content: str | None) -> tuple[bool, str | None, str | None]:
    """(violation, category, rationale) from the model's final text.

    Accepts the forms the gpt-oss-safeguard guide documents: a bare 0/1, or a JSON
    object with `violation` (and optional `policy_category`, `rationale`). Raw harmony
    text (server started without `--reasoning-parser`) is cut to its final channel.
    Anything else raises ClassifierError: an unreadable, partial or ambiguous answer
    (two different verdicts, a verdict object cut short) is never an allow.
    """
    text = (content or "").strip()
    if (quick := _one_object(text)) is not None:
        return quick
    final = _HARMONY_FINAL.search(text)
    if final:
        text = final.group(1)
    elif text.startswith(_HARMONY_START):
        # Raw harmony cut off before its final channel: whatever it mentions is no verdict.
        raise ClassifierError("unparseable", "classifier output ended before a final answer")
    text = text.replace("<|return|>", "").replace("<|end|>", "").strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    if text in ("0", "1"):
        return text == "1", None, None
    verdicts, rest = _verdict_objects(text)
    if '"violation"' in rest:
        raise ClassifierError("unparseable", f"a verdict cut short in {text[:120]!r}")
    if len({label for label, _, _ in verdicts}) > 1:
        raise ClassifierError("unparseable", f"two different verdicts in {text[:120]!r}")
    if not verdicts:
        raise ClassifierError("unparseable", f"no verdict in classifier output {text[:120]!r}")
    label, data, _ = verdicts[-1]
    return label, *_details(data)


def _one_object(text: str) -> tuple[bool, str | None, str | None] | None:
    """The usual answer, read in one step: the whole text one JSON verdict object, with no
    harmony marker anywhere in it. None for anything else (parse_verdict then reads it the
    long way, which gives this same result for such a text, errors included)."""
    if not (text.startswith("{") and text.endswith("}")):
        return None
    if "assistantfinal" in text or "<|" in text:
        return None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or (label := _label(data.get("violation"))) is None:
        return None
    return label, *_details(data)


def _details(data: dict) -> tuple[str | None, str | None]:
    """(category, rationale) of a verdict object; empty ones are None."""
    category, rationale = data.get("policy_category"), data.get("rationale")
    category = str(category) if category not in (None, "") else None
    return category, str(rationale) if rationale else None


def _verdict_objects(text: str) -> tuple[list[tuple[bool, dict, int]], str]:
    """Every JSON object in `text` with a readable `violation`, and the text outside all
    JSON objects (where a `"violation"` left over means an object that does not close)."""
    found: list[tuple[bool, dict, int]] = []
    outside, at = [], 0
    while (start := text.find("{", at)) != -1:
        try:
            data, end = _DECODER.raw_decode(text, start)
        except ValueError:
            outside.append(text[at : start + 1])
            at = start + 1
            continue
        outside.append(text[at:start])
        at = end
        if isinstance(data, dict) and "violation" in data:
            label = _label(data["violation"])
            if label is None:
                raise ClassifierError("unparseable", f"violation is not 0 or 1: {text[:120]!r}")
            found.append((label, data, end))
    outside.append(text[at:])
    return found, "".join(outside)


def read_answer(raw: bytes) -> Answer:
    """The verdict in a chat completion body from any runtime serving the model.

    Where runtimes put things: SGLang `content` + `reasoning_content`; vLLM, Ollama and
    OpenRouter `content` + `reasoning`; some vLLM versions `content: null` with the final
    answer at the end of `reasoning`; llama.cpp without a reasoning format the harmony
    channels inside `content`; other reasoning models `<think>...</think>` before it.
    An answer cut by the token limit, or filtered, is an error, whatever it says.
    """
    try:
        choice = orjson.loads(raw)["choices"][0]
        message = choice["message"]
        if not isinstance(message, dict):
            raise TypeError
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise ClassifierError("unparseable", f"not a chat completion: {raw[:120]!r}") from None
    finish = choice.get("finish_reason")
    if finish in ("length", "content_filter", "abort"):
        raise ClassifierError(
            "unparseable",
            f"classifier answer incomplete (finish_reason {finish}); "
            + ("raise its max tokens or lower the effort" if finish == "length" else "no verdict"),
        )
    content = _text(message.get("content"))
    field = next((f for f in ("reasoning_content", "reasoning") if _text(message.get(f))), None)
    reasoning = _text(message.get(field)) if field else None
    if content.strip():
        final, shape = content, "content"
        think = _THINK.match(content.strip())
        if think:
            final, shape = think.group(2), "<think> + content"
            reasoning = reasoning or think.group(1).strip()
        elif content.lstrip().startswith("<think>"):
            raise ClassifierError("unparseable", "classifier output ended inside <think>")
        elif content.lstrip().startswith(_HARMONY_START):
            analysis = _HARMONY_ANALYSIS.match(content.strip())
            reasoning = reasoning or (analysis.group(1).strip() if analysis else None)
            shape = "harmony channels in content"
        elif field:
            shape = f"content + {field}"
        violation, category, rationale = parse_verdict(final)
    elif reasoning and field:
        shape = f"verdict in {field}, content empty"
        violation, category, rationale = _verdict_in_reasoning(reasoning)
    else:
        raise ClassifierError("unparseable", "empty classifier answer (no content, no reasoning)")
    return Answer(violation, category, rationale, reasoning or None, shape)


def _verdict_in_reasoning(reasoning: str) -> tuple[bool, str | None, str | None]:
    """The vLLM bug: the final answer appended to the reasoning. Only a final-channel
    marker or a verdict object ending the text counts, and only when nothing earlier in
    the reasoning reads as a different verdict."""
    if _HARMONY_FINAL.search(reasoning):
        return parse_verdict(reasoning)
    text = reasoning.replace("<|return|>", "").replace("<|end|>", "").rstrip()
    verdicts, _ = _verdict_objects(text)
    if not verdicts or verdicts[-1][2] != len(text):
        raise ClassifierError("unparseable", "no content, and no verdict ending the reasoning")
    if len({label for label, _, _ in verdicts}) > 1:
        raise ClassifierError("unparseable", "two different verdicts in the reasoning")
    label, data, _ = verdicts[-1]
    return label, *_details(data)


def _text(value: object) -> str:
    """Message text: a string, or OpenAI-style content parts joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text", "") for p in value if isinstance(p, dict))
    return ""


def _label(value: object) -> bool | None:
    """0/1 as the guide writes it (int, float, bool or string); anything else is no label."""
    if isinstance(value, str):
        value = value.strip()
    if value in (1, "1", True):
        return True
    if value in (0, "0", False):
        return False
    return None
