"""Call the gateway with the official openai SDK: only base_url and the key change.

    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=sk-safeguard-dev \
    MODEL=gpt-4o-mini python examples/python_sync.py "How do I bake bread?"

Exit status: 0 answered, 2 blocked by a policy (HTTP 400, code content_filter).
"""

from __future__ import annotations

import os
import sys

from openai import BadRequestError, OpenAI

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
API_KEY = os.environ.get("OPENAI_API_KEY", "sk-safeguard-dev")
MODEL = os.environ.get("MODEL", "gpt-4o-mini")


def main(prompt: str) -> int:
    client = OpenAI(base_url=BASE_URL, api_key=API_KEY)
    try:
        # with_raw_response exposes the gateway's headers alongside the parsed completion.
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}]
        )
    except BadRequestError as exc:
        if exc.code != "content_filter":
            raise
        # Azure-style detail: which policies fired, with their categories.
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("innererror", {}).get("content_filter_result", {})
        print(f"blocked (code={exc.code}): {exc.message}")
        for policy, result in detail.items():
            print(f"  policy {policy}: category {result.get('category')}")
        return 2
    completion = raw.parse()
    choice = completion.choices[0]
    print(choice.message.content or "")
    if choice.finish_reason == "content_filter":
        print("[the answer was withheld by an output policy]")
    # No x-safeguard-decision header means the route has no policies for this request.
    decision = raw.headers.get("x-safeguard-decision", "-")
    print(f"decision={decision} request_id={raw.headers.get('x-request-id')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(" ".join(sys.argv[1:]) or "Say hello in one short sentence."))
