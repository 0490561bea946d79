"""gpt-oss-safeguard classifier: the wire call, per runtime, and the Verdict it yields.

One chat call per (policy, content): the policy is the system message, byte-identical
across requests so SGLang's radix cache keeps its prefix; the content is the user
message. Reading the answer (any runtime's shape) lives in proxy.guard.answer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.guard.answer import Answer, ClassifierError, parse_verdict, read_answer
from proxy.guard.http1 import Origin
from proxy.policies import Policy

__all__ = [
    "Answer",
    "ClassifierError",
    "SafeguardClient",
    "Verdict",
    "parse_verdict",
    "read_answer",
]


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


Runtime = str  # sglang | vllm | ollama | openai-compatible

# What each runtime gets besides the messages. gpt-oss-safeguard reads the effort from its
# harmony system header, which every runtime fills from `reasoning_effort` (Ollama maps it
# to its own `think` level). Local runtimes get temperature 0 (LM Studio and some builds
# default to 0.8); hosted providers keep the model's default, since some refuse a
# temperature on reasoning models.
_UNSET: Any = object()
_MARK = "\x00safeguard-content\x00"
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
        headers = {"content-type": "application/json"}
        if api_key:  # hosted providers list models only for a key, too
            headers["authorization"] = f"Bearer {api_key}"
        self._frames: dict[tuple[str, str], tuple[bytes, bytes] | None] = {}
        self._origin = Origin(self.base_url, headers, limit=max_connections)

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

    def request_body(self, policy: Policy, content: str) -> bytes:
        effort = policy.reasoning_effort or self.reasoning_effort
        frame = self._frames.get((policy.text, effort), _UNSET)
        if frame is _UNSET:
            frame = self._frame(policy.text, effort)
        if frame is None:
            return self._encode(policy.text, effort, content)
        return frame[0] + orjson.dumps(content) + frame[1]

    def _encode(self, policy_text: str, effort: str, content: str) -> bytes:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": policy_text},
                {"role": "user", "content": content},
            ],
            "reasoning_effort": effort,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        body.update(self.extra_body)
        body["stream"] = False
        return orjson.dumps(body)

    def _frame(self, policy_text: str, effort: str) -> tuple[bytes, bytes] | None:
        """The body around the content, encoded once per policy text and effort (a JSON
        string encodes the same wherever it stands); None when extra_body moved it."""
        whole, mark = self._encode(policy_text, effort, _MARK), orjson.dumps(_MARK)
        head, found, tail = whole.partition(mark)
        frame = (head, tail) if found and mark not in tail else None
        if len(self._frames) >= 256:  # policy reloads leave old texts behind
            self._frames.clear()
        self._frames[(policy_text, effort)] = frame
        return frame

    async def ask(self, policy: Policy, content: str) -> Answer:
        """One classifier call, read into an Answer (ClassifierError when unusable)."""
        body = self.request_body(policy, content)
        status, raw = await self._call("POST", "/chat/completions", body, self.timeout_s)
        if status != 200:
            raise ClassifierError("http_error", f"HTTP {status}: {raw[:200]!r}")
        return read_answer(raw)

    async def _call(self, method: str, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        """The one place wire errors become ClassifierError."""
        try:
            return await self._origin.request(method, path, body, timeout)
        except TimeoutError:
            raise ClassifierError("timeout", f"no answer within {timeout}s") from None
        except OSError as exc:  # ConnectionError: refused, dropped, malformed
            raise ClassifierError("unreachable", f"{type(exc).__name__}: {exc}") from None

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
            status, _ = await self._origin.request("GET", "/models", b"", 2.0)
        except OSError as exc:  # TimeoutError and ConnectionError included
            return False, f"unreachable ({type(exc).__name__})"
        return (True, "ok") if status == 200 else (False, f"HTTP {status}")

    async def aclose(self) -> None:
        self._origin.close()


def errored(policy: Policy, exc: ClassifierError, latency_ms: float) -> Verdict:
    return Verdict(
        policy_id=policy.id,
        policy_version=policy.version,
        violation=False,
        source="error",
        error=str(exc),
        latency_ms=latency_ms,
    )
