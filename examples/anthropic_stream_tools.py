"""Stream a Claude answer that may call a tool, through the gateway (`pip install anthropic`).

    ANTHROPIC_BASE_URL=http://127.0.0.1:8080 ANTHROPIC_API_KEY=sk-safeguard-dev \
    MODEL=claude-sonnet-4-5 python examples/anthropic_stream_tools.py "Weather in Oslo?"

Output policies check the text and the tool call's input (`input_json_delta`) in windows
as they stream. If a policy flags them, forwarding stops before the flagged text and the
message ends with `stop_reason: "refusal"`: flagged text or tool input never arrives.
Exit status: 0 answered, 2 blocked (prompt refused or stream stopped by a policy).
"""

from __future__ import annotations

import json
import os
import sys

from anthropic import Anthropic, BadRequestError

BASE_URL = os.environ.get("ANTHROPIC_BASE_URL", "http://127.0.0.1:8080")
API_KEY = os.environ.get("ANTHROPIC_API_KEY", "sk-safeguard-dev")
MODEL = os.environ.get("MODEL", "claude-sonnet-4-5")
TOOLS = [
    {
        "name": "search",
        "description": "Search the web for current information.",
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    }
]


def main(prompt: str) -> int:
    client = Anthropic(base_url=BASE_URL, api_key=API_KEY)
    try:
        with client.messages.stream(
            model=MODEL,
            max_tokens=512,
            tools=TOOLS,
            messages=[{"role": "user", "content": prompt}],
        ) as stream:
            for text in stream.text_stream:
                print(text, end="", flush=True)
            message = stream.get_final_message()
    except BadRequestError as exc:  # refused before the stream starts
        print(f"blocked ({exc.body['error']['type']}): {exc.body['error']['message']}")
        return 2
    print()
    for block in message.content:
        if block.type == "tool_use":
            print(f"tool call: {block.name}({json.dumps(block.input)})")
    if message.stop_reason == "refusal":
        print("[stream stopped by an output policy]")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(" ".join(sys.argv[1:]) or "What is the weather in Oslo right now?"))
