"""Stream an answer through the gateway; output policies check it in windows as it flows.

    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=sk-safeguard-dev \
    MODEL=gpt-4o-mini python examples/python_stream.py "Tell me a short story."

If an output policy flags the text, the gateway stops forwarding and sends a last chunk
with finish_reason "content_filter"; flagged text never reaches the client.
Exit status: 0 answered, 2 blocked (input refused, or output cut by a policy).
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
        # A blocked prompt is refused before the stream starts: same 400 as non-streaming.
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
        )
    except BadRequestError as exc:
        if exc.code != "content_filter":
            raise
        print(f"blocked (code={exc.code}): {exc.message}")
        return 2
    finish_reason = None
    with stream:
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    print(choice.delta.content, end="", flush=True)
                finish_reason = choice.finish_reason or finish_reason
    print()
    if finish_reason == "content_filter":
        print("[stream stopped by an output policy]")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(" ".join(sys.argv[1:]) or "Count from one to five in words."))
