"""Safeguard Gateway benchmarks: `python tests/bench/run.py [--quick] [--only NAME[,NAME]]`.

Every server (upstream, classifier, forwarder, gateway, OTLP sink) and the load generator
run in their own processes on 127.0.0.1; this script only starts them, reads /proc and
reports. Prints a Markdown report and writes it with every raw number to
tests/bench/results.json (and the report to tests/bench/results.md).

Scenarios: core (issue 2), streams (issue 2, 1,000 open streams), guard, hiding, window
(issue 3), obs (issue 4). A full run takes ~6-8 minutes, `--quick` ~1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import `tests.bench.*` from the repo root
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p not in ("", _here)]
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import console, core, fleet, guard, ttft
from tests.bench.harness import Scenario, Settings
from tests.bench.report import render

HERE = Path(__file__).resolve().parent
SCENARIOS = {
    "core": core.core,
    "streams": core.streams,
    "guard": guard.guard,
    "hiding": guard.hiding,
    "window": guard.window,
    "ttft": ttft.ttft,
    "obs": core.observability,
    "console": console.console,
    "fleet_audit": fleet.fleet_audit,
    "fleet_cache": fleet.fleet_cache,
}


def environment() -> dict[str, str]:
    from importlib.metadata import version

    packages = ("aiohttp", "uvicorn", "uvloop", "httptools", "starlette", "orjson", "httpx")
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), "")
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "cpu_model": model,
        "kernel": platform.release(),
        **{p: version(p) for p in packages},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (~1.5 minutes)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--keep", action="store_true", help="keep server logs and configs")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; have {', '.join(SCENARIOS)}")
    env = environment()
    started = time.monotonic()
    scenarios: list[Scenario] = []
    failures: dict[str, str] = {}
    tmp = tempfile.mkdtemp(prefix="gateway-bench-")
    if args.keep:
        print(f"[bench] server logs and configs in {tmp}", file=sys.stderr)
    settings = Settings.make(args.quick, Path(tmp))
    try:
        for name in names:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                scenarios.append(SCENARIOS[name](settings))
            except Exception as exc:  # report what ran; keep the other scenarios
                failures[name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            print(f"[bench] {name} took {time.monotonic() - t0:.0f} s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    header = [
        f"Mode: {'quick' if args.quick else 'full'}; {elapsed:.0f} s; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        f"Machine: {env['cpus']} CPUs ({env['cpu_model'] or 'unknown'}), Python {env['python']}, "
        f"aiohttp {env['aiohttp']}, uvicorn {env['uvicorn']}, uvloop {env['uvloop']}.",
        "Load generator: tests/bench/loadgen.py (aiohttp client, closed loop, own process); "
        "all servers in their own processes on 127.0.0.1, sharing the machine's cores.",
        "Noise: on a shared 2-vCPU VM the host's speed drifts up to 2x within minutes (the "
        "same target measured twice can differ that much), so runs are interleaved and "
        "compared per round; trust the ratios and CPU us/req over absolute req/s.",
    ]
    text = render(header, scenarios, failures)
    print(text)
    out = Path(args.out)
    out.write_text(
        json.dumps(
            {
                "mode": "quick" if args.quick else "full",
                "elapsed_s": round(elapsed, 1),
                "environment": env,
                "scenarios": {
                    sc.name: {
                        "title": sc.title,
                        "notes": sc.notes,
                        "tables": sc.tables,
                        "checks": sc.checks,
                        "raw": sc.raw,
                    }
                    for sc in scenarios
                },
                "failures": failures,
                "report": text,
            },
            indent=1,
        )
    )
    out.with_suffix(".md").write_text(text)
    print(f"[bench] wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
