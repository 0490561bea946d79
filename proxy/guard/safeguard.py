"""gpt-oss-safeguard classifier: the wire call and the verdict parser.

One chat call per (policy, content): the policy is the system message, byte-identical
across requests so SGLang's radix cache keeps its prefix; the content is the user
message. The verdict is the final channel (`message.content`); the analysis channel
(`message.reasoning_content`) is kept for audit only.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

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


_HARMONY_FINAL = re.compile(r"(?:assistantfinal|<\|channel\|>final<\|message\|>)(.*)$", re.S)
_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


def parse_verdict(content: str | None) -> tuple[bool, str | None, str | None]:
    """(violation, category, rationale) from the model's final text.

    Accepts the forms the gpt-oss-safeguard guide documents: a bare 0/1, or a JSON
    object with `violation` (and optional `policy_category`, `rationale`). Raw harmony
    text (server started without `--reasoning-parser`) is cut to its final channel.
    Anything else raises ClassifierError: an unreadable answer is never an allow.
    """
    text = (content or "").strip()
    final = _HARMONY_FINAL.search(text)
    if final:
        text = final.group(1).replace("<|return|>", "").replace("<|end|>", "").strip()
    elif text.startswith(("analysis", "<|channel|>analysis", "<|start|>")):
        # Raw harmony cut off before its final channel: whatever it mentions is no verdict.
        raise ClassifierError("unparseable", "classifier output ended before a final answer")
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    if text in ("0", "1"):
        return text == "1", None, None
    match = _JSON_OBJECT.search(text)
    if match:
        try:
            data = orjson.loads(match.group(0))
        except orjson.JSONDecodeError:
            data = None
        label = _label(data.get("violation")) if isinstance(data, dict) else None
        if label is not None:
            category = data.get("policy_category")
            rationale = data.get("rationale")
            return (
                label,
                str(category) if category not in (None, "") else None,
                str(rationale) if rationale else None,
            )
    raise ClassifierError("unparseable", f"no verdict in classifier output {text[:120]!r}")


def _label(value: object) -> bool | None:
    """0/1 as the guide writes it (int, float, bool or string); anything else is no label."""
    if isinstance(value, str):
        value = value.strip()
    if value in (1, "1", True):
        return True
    if value in (0, "0", False):
        return False
    return None


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
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.reasoning_effort = reasoning_effort
        self.timeout_s = timeout_s
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    def request_body(self, policy: Policy, content: str) -> bytes:
        return orjson.dumps(
            {
                "model": self.model,
                "messages": [
                    {"role": "system", "content": policy.text},
                    {"role": "user", "content": content},
                ],
                "reasoning_effort": policy.reasoning_effort or self.reasoning_effort,
                "temperature": 0,
                "stream": False,
            }
        )

    async def classify(self, policy: Policy, content: str) -> Verdict:
        started = time.perf_counter()
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
        try:
            message = orjson.loads(raw)["choices"][0]["message"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            raise ClassifierError("unparseable", f"not a chat completion: {raw[:120]!r}") from None
        violation, category, rationale = parse_verdict(message.get("content"))
        return Verdict(
            policy_id=policy.id,
            policy_version=policy.version,
            violation=violation,
            category=category,
            rationale=rationale,
            reasoning=message.get("reasoning_content"),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def ready(self) -> tuple[bool, str]:
        """Whether the model server answers its model list (SGLang: 503 while loading)."""
        try:
            async with self._client().get(
                self.base_url + "/models", timeout=aiohttp.ClientTimeout(total=2)
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
