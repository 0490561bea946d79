"""gpt-oss-safeguard classifier: the wire call and the verdict parser.

One chat call per (policy, content): the policy is the system message, byte-identical
across requests so SGLang's radix cache keeps its prefix; the content is the user
message. The verdict is the final channel (`message.content`); the analysis channel
(`message.reasoning_content`) is kept for audit only.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from proxy.policies import Policy


class ClassifierError(Exception):
    """The classifier could not give a usable verdict (down, timeout, garbage)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind  # timeout | unreachable | http_error | unparseable
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Verdict:
    policy_id: str
    policy_version: str
    violation: bool
    category: str | None = None
    rationale: str | None = None
    reasoning: str | None = None
    source: str = "model"  # model | detector | error
    cache_hit: bool = False
    latency_ms: float = 0.0
    error: str | None = None
    shadow: bool = False

    @property
    def label(self) -> str:
        if self.error:
            return "error"
        return "violation" if self.violation else "safe"

    def as_record(self) -> dict:
        return {
            "policy": self.policy_id,
            "version": self.policy_version,
            "label": self.label,
            "category": self.category,
            "rationale": self.rationale,
            "reasoning": self.reasoning,
            "source": self.source,
            "cache_hit": self.cache_hit,
            "latency_ms": round(self.latency_ms, 2),
            "error": self.error,
            "shadow": self.shadow,
        }


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


def _details(data: dict) -> tuple[str | None, str | None]:
    category, rationale = data.get("policy_category"), data.get("rationale")
    return str(category) if category not in (None, "") else None, str(
        rationale
    ) if rationale else None


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
            reasoning, final, shape = (
                reasoning or think.group(1).strip(),
                think.group(2),
                "<think> + content",
            )
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


Runtime = str  # sglang | vllm | ollama | openai-compatible

# What each runtime gets besides the messages. gpt-oss-safeguard reads the effort from its
# harmony system header, which every runtime fills from `reasoning_effort` (Ollama maps it
# to its own `think` level). Local runtimes get temperature 0 (LM Studio and some builds
# default to 0.8); hosted providers keep the model's default, since some refuse a
# temperature on reasoning models.
RUNTIME_TEMPERATURE: dict[str, float | None] = {
    "sglang": 0.0,
    "vllm": 0.0,
    "ollama": 0.0,
    "openai-compatible": None,
}


class SafeguardClient:
    """The classifier seam: any OpenAI-compatible chat endpoint hosting the model."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        reasoning_effort: str = "low",
        timeout_s: float = 20.0,
        api_key: str | None = None,
        max_connections: int = 256,
        runtime: Runtime = "sglang",
        temperature: float | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.reasoning_effort = reasoning_effort
        self.timeout_s = timeout_s
        self.runtime = runtime
        self.temperature = RUNTIME_TEMPERATURE[runtime] if temperature is None else temperature
        self.extra_body = dict(extra_body or {})
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, settings: Any) -> SafeguardClient:
        """Built from a `classifier:` config section (proxy.config.Classifier)."""
        return cls(
            settings.base_url,
            settings.model,
            reasoning_effort=settings.reasoning_effort,
            timeout_s=settings.timeout_s,
            api_key=settings.api_key or None,
            runtime=settings.runtime,
            temperature=settings.temperature,
            extra_body=settings.extra_body,
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    def request_body(self, policy: Policy, content: str) -> bytes:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": policy.text},
                {"role": "user", "content": content},
            ],
            "reasoning_effort": policy.reasoning_effort or self.reasoning_effort,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        body.update(self.extra_body)
        body["stream"] = False
        return orjson.dumps(body)

    async def ask(self, policy: Policy, content: str) -> Answer:
        """One classifier call, read into an Answer (ClassifierError when unusable)."""
        try:
            async with self._client().post(
                self.url, data=self.request_body(policy, content), headers=self._headers
            ) as response:
                raw = await response.read()
                if response.status != 200:
                    raise ClassifierError("http_error", f"HTTP {response.status}: {raw[:200]!r}")
        except TimeoutError:
            raise ClassifierError("timeout", f"no answer within {self.timeout_s}s") from None
        except aiohttp.ClientError as exc:
            raise ClassifierError("unreachable", f"{type(exc).__name__}: {exc}") from None
        return read_answer(raw)

    async def classify(self, policy: Policy, content: str) -> Verdict:
        started = time.perf_counter()
        answer = await self.ask(policy, content)
        return Verdict(
            policy_id=policy.id,
            policy_version=policy.version,
            violation=answer.violation,
            category=answer.category,
            rationale=answer.rationale,
            reasoning=answer.reasoning,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def ready(self) -> tuple[bool, str]:
        """Whether the model server answers its model list (SGLang: 503 while loading)."""
        try:
            async with self._client().get(
                self.base_url + "/models",
                headers=self._headers,  # hosted providers list models only for a key
                timeout=aiohttp.ClientTimeout(total=2),
            ) as response:
                if response.status == 200:
                    return True, "ok"
                return False, f"HTTP {response.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return False, f"unreachable ({type(exc).__name__})"

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def errored(policy: Policy, exc: ClassifierError, latency_ms: float) -> Verdict:
    return Verdict(
        policy_id=policy.id,
        policy_version=policy.version,
        violation=False,
        source="error",
        error=str(exc),
        latency_ms=latency_ms,
    )
