"""Concurrent requests through the gateway with AsyncOpenAI.

    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=sk-safeguard-dev \
    MODEL=gpt-4o-mini python examples/python_async.py "first question" "second question"

Each prompt is answered (or blocked) independently; one line per prompt, in order.
Exit status: 0 all answered, 2 if any prompt was blocked by a policy.
"""

from __future__ import annotations

import asyncio
import os
import sys

from openai import AsyncOpenAI, BadRequestError

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
API_KEY = os.environ.get("OPENAI_API_KEY", "sk-safeguard-dev")
MODEL = os.environ.get("MODEL", "gpt-4o-mini")


async def ask(client: AsyncOpenAI, prompt: str) -> tuple[bool, str]:
    try:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}]
        )
    except BadRequestError as exc:
        if exc.code != "content_filter":
            raise
        return False, f"blocked (code={exc.code}): {exc.message}"
    choice = completion.choices[0]
    text = choice.message.content or ""
    if choice.finish_reason == "content_filter":
        text += " [withheld by an output policy]"
    return True, text


async def main(prompts: list[str]) -> int:
    async with AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY) as client:
        results = await asyncio.gather(*(ask(client, p) for p in prompts))
    for i, (_, text) in enumerate(results):
        print(f"[{i}] {text}")
    return 0 if all(ok for ok, _ in results) else 2


if __name__ == "__main__":
    prompts = sys.argv[1:] or ["Name a colour.", "Name a fruit.", "Name a city."]
    sys.exit(asyncio.run(main(prompts)))
