"""LangChain through the gateway: ChatOpenAI with base_url pointed at it.

    pip install langchain-openai
    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=sk-safeguard-dev \
    MODEL=gpt-4o-mini python examples/langchain_client.py "How do I bake bread?"

A blocked prompt surfaces as the openai SDK's BadRequestError (LangChain re-raises it).
Exit status: 0 answered, 2 blocked by a policy.
"""

from __future__ import annotations

import os
import sys

from langchain_openai import ChatOpenAI
from openai import BadRequestError

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
API_KEY = os.environ.get("OPENAI_API_KEY", "sk-safeguard-dev")
MODEL = os.environ.get("MODEL", "gpt-4o-mini")


def main(prompt: str) -> int:
    llm = ChatOpenAI(model=MODEL, base_url=BASE_URL, api_key=API_KEY, max_retries=0)
    try:
        message = llm.invoke(prompt)
    except BadRequestError as exc:
        if exc.code != "content_filter":
            raise
        print(f"blocked (code={exc.code}): {exc.message}")
        return 2
    print(message.content)
    if message.response_metadata.get("finish_reason") == "content_filter":
        print("[the answer was withheld by an output policy]")
    return 0


if __name__ == "__main__":
    sys.exit(main(" ".join(sys.argv[1:]) or "Say hello in one short sentence."))
