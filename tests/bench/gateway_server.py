"""Launch one gateway worker for a benchmark from a JSON config dict.

Same path as `safeguard-gateway serve` with one worker: `parse_config` -> `build_app` ->
uvicorn (uvloop, httptools, lifespan on, no access log). OTEL_* variables come from the
environment the orchestrator sets.

    python -m tests.bench.gateway_server --config /tmp/.../gateway.json [--port 0]
"""

from __future__ import annotations

import json
import logging

from proxy.app import build_app
from proxy.config import parse_config
from proxy.server import uvicorn_options
from tests.bench.common import prepare, run_asgi, server_args


def main() -> None:
    parser = server_args(__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a JSON file holding the config dict")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with open(args.config, encoding="utf-8") as f:
        config = parse_config(json.load(f), source=args.config)
    sock = prepare(args)
    run_asgi(
        build_app(config),
        sock,
        lifespan="on",
        timeout_graceful_shutdown=30,
        **uvicorn_options(config.server),  # the protocol `serve` runs
    )


if __name__ == "__main__":
    main()
