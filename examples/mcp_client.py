"""An MCP client (the official `mcp` SDK) using tools through Safeguard Gateway.

The gateway serves each configured MCP server at `/mcp/<name>` and takes the gateway key
as a bearer token; the server's own credentials stay in the gateway's config. Tool calls
whose arguments a policy flags come back as tool errors (`is_error`), results carrying
injected instructions are withheld the same way, and poisoned tools never show up in
the list.

    pip install mcp
    MCP_URL=http://127.0.0.1:8080/mcp/docs GATEWAY_KEY=sk-safeguard-dev \
        python examples/mcp_client.py echo '{"text": "hello"}'

Prints the tools the gateway lets through, then the call's result text (or
`blocked: ...` with the gateway's message).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def main(tool: str, arguments: dict) -> None:
    url = os.environ.get("MCP_URL", "http://127.0.0.1:8080/mcp/docs")
    key = os.environ.get("GATEWAY_KEY", "sk-safeguard-dev")
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
    async with (
        http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = await session.list_tools()
        print("tools:", ", ".join(sorted(t.name for t in tools.tools)))
        result = await session.call_tool(tool, arguments)
        text = "\n".join(block.text for block in result.content if block.type == "text")
        print(f"blocked: {text}" if result.is_error else text)


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "echo"
    args = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {"text": "hello"}
    asyncio.run(main(name, args))
