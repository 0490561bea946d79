"""Claude through the gateway with the official `anthropic` SDK (`pip install anthropic`).

    ANTHROPIC_BASE_URL=http://127.0.0.1:8080 ANTHROPIC_API_KEY=sk-safeguard-dev \
    MODEL=claude-sonnet-4-5 python examples/anthropic_sync.py "How do I bake sourdough bread?"

The gateway key goes where the Anthropic key went (the SDK sends it as `x-api-key`); the
gateway sends its own Anthropic key upstream. A blocked prompt is a `BadRequestError`
(400, `invalid_request_error`); a withheld answer comes back with `stop_reason: "refusal"`.
Exit status: 0 answered, 2 blocked (prompt refused or answer withheld).
"""

from __future__ import annotations

import os
import sys

from anthropic import Anthropic, BadRequestError

BASE_URL = os.environ.get("ANTHROPIC_BASE_URL", "http://127.0.0.1:8080")  # no /v1: the SDK adds it
API_KEY = os.environ.get("ANTHROPIC_API_KEY", "sk-safeguard-dev")
MODEL = os.environ.get("MODEL", "claude-sonnet-4-5")


def main(prompt: str) -> int:
    client = Anthropic(base_url=BASE_URL, api_key=API_KEY)
    try:
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=512, messages=[{"role": "user", "content": prompt}]
        )
    except BadRequestError as exc:
        print(f"blocked ({exc.body['error']['type']}): {exc.body['error']['message']}")
        return 2
    message = raw.parse()
    print("".join(block.text for block in message.content if block.type == "text"))
    decision = raw.headers.get("x-safeguard-decision", "-")
    print(f"decision={decision} request_id={raw.headers.get('x-request-id')}", file=sys.stderr)
    if message.stop_reason == "refusal":
        print(f"[answer withheld by policy {raw.headers.get('x-safeguard-policies')}]")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(" ".join(sys.argv[1:]) or "Say hello in three languages."))
