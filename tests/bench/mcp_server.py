"""The test suite's MCP server (the official SDK's MCPServer, Streamable HTTP at `/mcp`)
served for a benchmark: uvicorn with uvloop and httptools, like every bench server.

    python -m tests.bench.mcp_server [--port 0] [--json]
"""

from __future__ import annotations

import logging

from tests.bench.common import prepare, run_asgi, server_args
from tests.fakes.mcp_server import build_server


def main() -> None:
    parser = server_args(__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="answer application/json, not SSE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sock = prepare(args)
    app = build_server().streamable_http_app(json_response=args.json)
    run_asgi(app, sock, lifespan="on")


if __name__ == "__main__":
    main()
