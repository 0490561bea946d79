"""`safeguard-gateway audit tail|query|export|stats`: read the store named by the config.

Tables for people, `--json` lines for machines. Usage errors (bad config, missing store,
malformed filter) print one line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from proxy.audit_backends import describe_store, store_errors
from proxy.audit_store import (
    AuditQueryError,
    Filters,
    StoreMissing,
    compute_stats,
    open_reader,
    select,
)
from proxy.config import Config, ConfigError, load_config
from proxy.policies import PolicyError, load_policies
from proxy.reviews import export_cases

DEFAULT_CONFIG = "config/gateway.yaml"
COLUMNS = ("time", "request id", "tenant", "route", "model", "decision", "status", "flagged")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `audit` command tree to the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help=f"gateway config file (default {DEFAULT_CONFIG})",
    )
    common.add_argument("--json", action="store_true", help="JSON output instead of a table")
    common.add_argument("--tenant", help="tenant name (comma-separated for several)")
    common.add_argument("--route", help="route name")
    common.add_argument("--policy", help="requests with a verdict for this policy")
    common.add_argument(
        "--decision", help="allow|annotate|redact|block|error|fail_open (comma-separated)"
    )
    common.add_argument("--request-id", help="the gateway's x-request-id of one request (req_...)")
    common.add_argument("--since", help="unix seconds, ISO-8601, or a time ago: 15m, 2h, 7d")
    common.add_argument("--until", help="same forms as --since (exclusive)")

    audit = subparsers.add_parser("audit", help="read the audit trail")
    sub = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)

    tail = sub.add_parser("tail", parents=[common], help="the most recent records")
    tail.add_argument("--limit", "-n", type=_count, default=20, help="records (default 20)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    tail.add_argument("--interval", type=float, default=1.0, help="--follow poll seconds")
    tail.add_argument("--polls", type=_count, default=None, help=argparse.SUPPRESS)
    tail.set_defaults(func=_tail)

    q = sub.add_parser("query", parents=[common], help="records matching the filters")
    q.add_argument("--limit", type=_count, default=100, help="records (default 100)")
    q.add_argument("--offset", type=_count, default=0)
    q.add_argument("--oldest-first", action="store_true")
    q.set_defaults(func=_query)

    export = sub.add_parser("export", parents=[common], help="JSON lines, oldest first")
    export.add_argument("--limit", type=_count, default=None, help="records (default all)")
    export.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    export.add_argument(
        "--reviewed",
        action="store_true",
        help="reviewed verdicts as golden-set cases for `policy test --cases` (--policy, "
        "--since narrow them)",
    )
    export.set_defaults(func=_export)

    st = sub.add_parser("stats", parents=[common], help="decisions per policy and tenant")
    st.add_argument("--limit", type=_count, default=None, help="only the N most recent records")
    st.set_defaults(func=_stats)
    return audit


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


# -- commands --------------------------------------------------------------------------------


def _tail(args: argparse.Namespace) -> int:
    def run(conn: sqlite3.Connection, filters: Filters) -> int:
        rows = list(select(conn, filters, limit=args.limit, newest_first=True))[::-1]
        emit = _printer(args.json, sys.stdout)
        emit([r for _, r in rows], header=True)
        if args.follow:
            last = rows[-1][0] if rows else _max_id(conn)
            for batch in follow(conn, filters, last, interval=args.interval, polls=args.polls):
                emit(batch, header=False)
        return 0

    return _with_store(args, run)


def _query(args: argparse.Namespace) -> int:
    def run(conn: sqlite3.Connection, filters: Filters) -> int:
        rows = select(
            conn, filters, limit=args.limit, offset=args.offset, newest_first=not args.oldest_first
        )
        _printer(args.json, sys.stdout)([r for _, r in rows], header=True)
        return 0

    return _with_store(args, run)


def _export(args: argparse.Namespace) -> int:
    def run(conn: sqlite3.Connection, filters: Filters) -> int:
        if args.reviewed:
            cases = export_cases(conn, policy=args.policy, since=filters.since)
            rows = ((None, case) for case in itertools.islice(cases, args.limit))
        else:
            rows = select(conn, filters, limit=args.limit, newest_first=False)
        if not args.out:
            _write_lines((r for _, r in rows), sys.stdout.buffer)
            return 0
        with open(args.out, "wb") as out:
            n = _write_lines((r for _, r in rows), out)
        what = "cases" if args.reviewed else "records"
        print(f"exported {n} {what} to {args.out}", file=sys.stderr)
        return 0

    return _with_store(args, run)


def _stats(args: argparse.Namespace) -> int:
    def run(conn: sqlite3.Connection, filters: Filters) -> int:
        report = compute_stats(conn, filters, limit=args.limit)
        targets = shadow_targets(args.loaded_config)
        report["agreement"] = [
            a
            for a in report["agreement"]
            if (key := (a["shadow_policy"], a["side"] or "")) not in targets
            or a["enforced_policy"] in targets[key]
        ]
        if args.json:
            sys.stdout.write(orjson.dumps(report).decode() + "\n")
        else:
            sys.stdout.write(format_stats(report))
        return 0

    return _with_store(args, run)


def shadow_targets(config: Config) -> dict[tuple[str, str], set[str]]:
    """(shadow policy, side) -> the enforced policies `audit stats` compares it with: the
    one its front matter names (`shadows: spam`), else the enforced policy at its position
    on the route side (`policies: [a, b]`, `shadow: [a-v2, b-v2]`)."""
    try:
        policies = load_policies(config.policies_dir)
    except PolicyError:
        policies = {}  # stats still work from the routes alone
    targets: dict[tuple[str, str], set[str]] = {}
    for route in config.routes.values():
        for side_name, side in (("input", route.input), ("output", route.output)):
            for i, ref in enumerate(side.shadow):
                found = targets.setdefault((ref.id, side_name), set())
                declared = policies[ref.id].shadows if ref.id in policies else None
                if declared or i < len(side.policies):
                    found.add(declared or side.policies[i].id)
    return targets


def follow(
    conn: sqlite3.Connection,
    filters: Filters,
    after_id: int,
    *,
    interval: float,
    polls: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[list[dict]]:
    """Batches of records stored after `after_id`, polling every `interval` seconds."""
    done = 0
    while polls is None or done < polls:
        sleep(interval)
        done += 1
        rows = list(select(conn, filters, limit=None, newest_first=False, after_id=after_id))
        if rows:
            after_id = max(row_id for row_id, _ in rows)
            yield [r for _, r in rows]


# -- plumbing --------------------------------------------------------------------------------


def _filter_args(args: argparse.Namespace) -> dict[str, Any]:
    names = ("tenant", "route", "policy", "decision", "request_id", "since", "until")
    return {name: getattr(args, name) for name in names}


def _with_store(args: argparse.Namespace, run: Callable[..., int]) -> int:
    """Resolve the store from --config, parse the filters, run; usage errors -> exit 2."""
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    try:
        cfg = load_config(args.config)
        args.db_path, args.loaded_config = describe_store(cfg.audit), cfg
        errors = store_errors(cfg.audit)
        filters = Filters.build(**_filter_args(args))
        with closing(open_reader(cfg.audit)) as conn:
            return run(conn, filters)
    except ConfigError as exc:
        return _fail(f"config: {exc}")
    except StoreMissing:
        return _fail(
            f"no audit store at {args.db_path} (audit.path in {args.config}); "
            "nothing has been recorded there yet"
        )
    except AuditQueryError as exc:
        return _fail(str(exc))
    except errors as exc:
        return _fail(f"cannot read audit store {args.db_path}: {exc}")
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `audit export | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _max_id(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0]


def _write_lines(records: Iterable[dict], out: IO[bytes]) -> int:
    n = 0
    for record in records:
        out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        n += 1
    out.flush()
    return n


def _printer(as_json: bool, out: IO[str]) -> Callable[..., None]:
    def emit(records: list[dict], *, header: bool) -> None:
        if as_json:
            _write_lines(records, out.buffer)
            return
        rows = [row(r) for r in records]
        if header and not rows:
            print("(no matching audit records)", file=sys.stderr)
            return
        out.write(format_table(rows, header=header))
        out.flush()

    return emit


# -- human formatting (pure) -----------------------------------------------------------------


def row(record: dict) -> tuple[str, ...]:
    """One table row: time, request id, tenant, route, model, decision, status, flagged."""
    return (
        _when(record.get("time")),
        str(record.get("request_id") or "-"),
        str(record.get("tenant") or "-"),
        str(record.get("route") or "-"),
        str(record.get("model") or "-"),
        str(record.get("decision") or "-"),
        str(record.get("status") or "-"),
        flagged(record.get("verdicts") or ()),
    )


def flagged(verdicts: Iterable[dict]) -> str:
    """Policies that flagged (or failed on) the request, once each: `pii, spam(shadow)`."""
    names: dict[str, None] = {}
    for v in verdicts:
        if not isinstance(v, dict) or v.get("label") not in ("violation", "error"):
            continue
        marks = [
            m for m, on in (("shadow", v.get("shadow")), ("error", v["label"] == "error")) if on
        ]
        names[str(v.get("policy")) + (f"({','.join(marks)})" if marks else "")] = None
    return ", ".join(names) or "-"


def _when(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_table(rows: list[tuple[str, ...]], *, header: bool = True, columns=COLUMNS) -> str:
    table = [tuple(c.upper() for c in columns), *rows] if header else rows
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))] if table else []
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in table]
    return "".join(line.rstrip() + "\n" for line in lines)


def format_stats(report: dict) -> str:
    """The `audit stats` report for people."""
    span = ""
    if report["first"] is not None:
        span = f" from {_when(report['first'])} to {_when(report['last'])}"
    out = [f"{report['requests']} requests{span}\n"]
    decisions = ("allow", "annotate", "redact", "block", "error")
    extra = sorted(set(report["decisions"]) - set(decisions))
    names = [*decisions, *extra]

    def section(title: str, cols: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        if rows:
            out.append(f"\n{title}\n" + format_table(rows, columns=cols))

    section(
        "decisions per tenant",
        ("tenant", "requests", *names),
        [
            (t, str(e["requests"]), *(str(e["decisions"].get(d, 0)) for d in names))
            for t, e in report["tenants"].items()
        ],
    )
    for key, title in (("policies", "enforced"), ("shadow_policies", "shadow")):
        section(
            f"{title} policies (labels per check; requests by decision)",
            ("policy", "requests", "violation", "safe", "failed", *names),
            [
                (
                    p,
                    str(e["requests"]),
                    *(str(e["labels"][lab]) for lab in ("violation", "safe", "error")),
                    *(str(e["decisions"].get(d, 0)) for d in names),
                )
                for p, e in report[key].items()
            ],
        )
    section(
        "shadow vs enforced agreement",
        (
            "shadow",
            "enforced",
            "side",
            "pairs",
            "agreement",
            "both flag",
            "both safe",
            "shadow only",
            "enforced only",
            "errors",
        ),
        [
            (
                a["shadow_policy"],
                a["enforced_policy"],
                a["side"] or "-",
                str(a["pairs"]),
                "-" if a["agreement"] is None else f"{a['agreement']:.1%}",
                *(
                    str(a[k])
                    for k in (
                        "both_violation",
                        "both_safe",
                        "shadow_only",
                        "enforced_only",
                        "errors",
                    )
                ),
            )
            for a in report["agreement"]
        ],
    )
    return "".join(out)
