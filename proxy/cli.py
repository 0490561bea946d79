"""`safeguard-gateway` (and `python -m proxy`): serve, check-config, policy, audit."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from proxy.config import ConfigError, load_config
from proxy.console.session import server_secret
from proxy.policies import PolicyError

DEFAULT_CONFIG = "config/gateway.yaml"


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.app import CONFIG_ENV, build_app
    from proxy.gateway import check_policies
    from proxy.policies import load_policies
    from proxy.server import uvicorn_options

    config = load_config(args.config)
    check_policies(config, load_policies(config.policies_dir))  # fail fast, before binding
    host = args.host or config.server.host
    port = args.port or config.server.port
    workers = args.workers or config.server.workers
    options = dict(
        host=host,
        port=port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=30,
        lifespan="on",
        **uvicorn_options(config.server),
    )
    if workers > 1:  # one supervisor, N workers: one /metrics, reload and /readyz for all
        from proxy.fleet.supervisor import serve_fleet

        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
        server_secret()  # one console session secret for every worker
        return serve_fleet(args.config, workers, options)
    else:
        uvicorn.run(build_app(config), **options)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from proxy.gateway import check_policies
    from proxy.policies import load_policies

    config = load_config(args.config)
    policies = load_policies(config.policies_dir)
    check_policies(config, policies)
    print(
        f"{args.config}: ok — {len(config.tenants)} tenants, {len(config.routes)} routes, "
        f"{len(policies)} policies, {len(config.upstreams)} upstreams"
    )
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    import json

    from proxy.config import config_schema

    print(json.dumps(config_schema(), indent=2))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("safeguard-gateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    from proxy import audit_cli
    from proxy.workbench import check as classifier_check
    from proxy.workbench import cli as workbench_cli

    parser = argparse.ArgumentParser(
        prog="safeguard-gateway",
        description="OpenAI-compatible guardrail gateway enforcing natural-language policies "
        "with gpt-oss-safeguard.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})"
    )
    serve.add_argument("--host", help="bind address (default: server.host)")
    serve.add_argument("--port", type=int, help="port (default: server.port)")
    serve.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every request (slower)")
    serve.set_defaults(func=_serve)

    check = commands.add_parser("check-config", help="validate a config and its policies")
    check.add_argument("--config", default=DEFAULT_CONFIG)
    check.set_defaults(func=_check_config)

    config_cmd = commands.add_parser("config", help="config file tools")
    config_sub = config_cmd.add_subparsers(dest="config_command", required=True, metavar="{schema}")
    schema = config_sub.add_parser(
        "schema",
        help="print the config file's JSON Schema (for editors' YAML plugins)",
    )
    schema.set_defaults(func=_config_schema)

    workbench_cli.register(commands)
    classifier_check.register(commands)
    audit_cli.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return code
    except (ConfigError, PolicyError) as exc:
        print(f"safeguard-gateway: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head` stopped reading: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # quiet exit flush
        return 0


if __name__ == "__main__":
    sys.exit(main())
