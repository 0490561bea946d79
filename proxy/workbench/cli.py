"""`safeguard-gateway policy test|lint`: the policy workbench's command line.

`register(subparsers)` adds the `policy` command tree to the gateway's argparse parser;
each leaf sets `func(args) -> int` (the exit code). Exit codes: 0 ok, 1 lint errors or F1
below `--min-f1`, 2 usage, config or file errors, or a classifier that answered no case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from proxy.config import Classifier, Config, ConfigError, load_config
from proxy.guard.safeguard import SafeguardClient
from proxy.policies import Policy, PolicyError, load_policies, load_policy
from proxy.workbench.cases import Case, CasesError, load_cases
from proxy.workbench.lint import LintReport, lint_file
from proxy.workbench.report import (
    Context,
    ProgressBar,
    gate_failures,
    lint_document,
    render_lint,
    render_test,
    results_document,
)
from proxy.workbench.runner import Run, evaluate

DEFAULT_CONFIG = "config/gateway.yaml"
EFFORTS = ("low", "medium", "high")


class UsageError(ValueError):
    """A bad combination of arguments; reported on stderr with exit code 2."""


def register(subparsers: argparse._SubParsersAction) -> None:
    policy = subparsers.add_parser(
        "policy", help="test and lint policies", description="Test and lint policy files."
    )
    commands = policy.add_subparsers(dest="policy_command", metavar="{test,lint}")
    commands.required = True

    test = commands.add_parser(
        "test",
        help="score a policy on a golden set",
        description="Classify a golden set with a policy and report precision, recall, F1, "
        "accuracy, the confusion matrix, per-category results, latency and every "
        "disagreement with the model's rationale.",
    )
    test.add_argument("policy", help="policy file, or a policy id from the config's policies_dir")
    test.add_argument(
        "--cases",
        required=True,
        metavar="FILE",
        help="golden set: JSON lines or CSV with content,label[,category]",
    )
    test.add_argument(
        "--config",
        metavar="PATH",
        help=f"gateway config for classifier settings and policies_dir "
        f"(default {DEFAULT_CONFIG} if it exists)",
    )
    test.add_argument(
        "--classifier",
        metavar="URL",
        help="classifier base URL (OpenAI-compatible, e.g. "
        "http://127.0.0.1:30000/v1); overrides the config's",
    )
    test.add_argument("--model", help="classifier model name (default: the config's)")
    test.add_argument(
        "--reasoning-effort", choices=EFFORTS, help="override the reasoning effort for every policy"
    )
    test.add_argument(
        "--concurrency",
        type=_positive_int,
        default=8,
        metavar="N",
        help="classifications in flight at once (default 8)",
    )
    test.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="per-classification timeout in seconds (default: the config's)",
    )
    test.add_argument(
        "--compare",
        metavar="POLICY",
        help="another policy (file or id) to run on the same cases: both metric "
        "sets side by side and the cases whose verdict flipped",
    )
    test.add_argument(
        "--min-f1",
        type=_unit_float,
        metavar="X",
        help="exit 1 when F1 is below X (with --compare: either policy's)",
    )
    test.add_argument("--json", action="store_true", help="print one JSON document")
    test.set_defaults(func=cmd_test)

    lint = commands.add_parser(
        "lint",
        help="check a policy against the gpt-oss-safeguard policy guide",
        description="Check policy files for the structure the gpt-oss-safeguard guide "
        "recommends. Exit 1 when any file has errors.",
    )
    lint.add_argument("files", nargs="+", metavar="file", help="policy file(s) or folder(s)")
    lint.add_argument("--json", action="store_true", help="print one JSON document")
    lint.set_defaults(func=cmd_lint)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


# ---------------------------------------------------------------- policy test


@dataclass(frozen=True, slots=True)
class Setup:
    policies: list[Policy]
    cases: list[Case]
    base_url: str
    model: str
    reasoning_effort: str
    timeout_s: float
    api_key: str | None
    classifier: Classifier = field(default_factory=Classifier)  # runtime, temperature, ...


def _config(args: argparse.Namespace) -> Config | None:
    if args.config:
        return load_config(args.config)
    if not Path(DEFAULT_CONFIG).is_file():
        return None
    try:
        return load_config(DEFAULT_CONFIG)
    except ConfigError as exc:
        if args.classifier:  # the config was only a default; the URL is enough
            print(f"warning: ignoring {DEFAULT_CONFIG}: {exc}", file=sys.stderr)
            return None
        raise


def base_url(url: str) -> str:
    """Validate a classifier URL; a bare host gets the OpenAI-style `/v1` path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--classifier must be an http(s) URL, got {url!r}")
    url = url.rstrip("/")
    return url + "/v1" if parts.path in ("", "/") else url


def resolve_policy(ref: str, policies_dir: str) -> Policy:
    """A policy file path, else an id in policies_dir (file `<id>.md` or a front-matter id)."""
    path = Path(ref)
    if path.is_file():
        return load_policy(path)
    if path.suffix == ".md" or "/" in ref or "\\" in ref:
        raise PolicyError(f"{ref}: no such policy file")
    directory = Path(policies_dir)
    candidate = directory / f"{ref}.md"
    if candidate.is_file():
        policy = load_policy(candidate)
        if policy.id == ref:
            return policy
    if not directory.is_dir():
        raise PolicyError(f"{ref}: not a file, and policies_dir {directory} is not a folder")
    policies = load_policies(directory)
    if ref not in policies:
        known = ", ".join(sorted(policies)) or "none"
        raise PolicyError(f"{ref}: no such policy file or id in {directory} (ids: {known})")
    return policies[ref]


def prepare(args: argparse.Namespace) -> Setup:
    config = _config(args)
    settings = config.classifier if config else Classifier()
    if args.classifier:
        url = base_url(args.classifier)
    elif config:
        url = settings.base_url
    else:
        raise UsageError(
            f"no classifier configured: pass --classifier URL (e.g. http://127.0.0.1:30000/v1) "
            f"or --config PATH ({DEFAULT_CONFIG} does not exist)"
        )
    # The config's key belongs to the config's server; never send it elsewhere.
    api_key = settings.api_key if config and url == settings.base_url else None
    policies_dir = config.policies_dir if config else "policies"
    refs = [args.policy] + ([args.compare] if args.compare else [])
    policies = [resolve_policy(ref, policies_dir) for ref in refs]
    for policy in policies:
        if policy.detectors_only:
            raise UsageError(
                f"{policy.id} is detectors-only: its patterns decide without the model, "
                "so there is nothing for `policy test` to score"
            )
    if args.reasoning_effort:
        policies = [replace(p, reasoning_effort=args.reasoning_effort) for p in policies]
    return Setup(
        policies=policies,
        cases=load_cases(args.cases),
        base_url=url,
        model=args.model or settings.model,
        reasoning_effort=args.reasoning_effort or settings.reasoning_effort,
        timeout_s=args.timeout or settings.timeout_s,
        api_key=api_key or None,
        classifier=settings,
    )


async def _evaluate(setup: Setup, concurrency: int, progress: ProgressBar | None) -> list[Run]:
    client = SafeguardClient(
        setup.base_url,
        setup.model,
        reasoning_effort=setup.reasoning_effort,
        timeout_s=setup.timeout_s,
        api_key=setup.api_key,
        max_connections=concurrency,
        runtime=setup.classifier.runtime,
        temperature=setup.classifier.temperature,
        extra_body=setup.classifier.extra_body,
    )
    try:
        return await evaluate(
            client, setup.policies, setup.cases, concurrency=concurrency, progress=progress
        )
    finally:
        await client.aclose()


def cmd_test(args: argparse.Namespace) -> int:
    try:
        setup = prepare(args)
    except (ConfigError, PolicyError, CasesError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        runs = asyncio.run(_evaluate(setup, args.concurrency, progress))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if progress is not None:
            progress.close()
    if down := _unreachable(runs):
        print(
            f"error: the classifier at {setup.base_url} is unreachable ({down}); start it "
            "(README: Where the model runs) or pass --classifier URL",
            file=sys.stderr,
        )
        return 2
    ctx = Context(
        cases_path=str(args.cases),
        base_url=setup.base_url,
        model=setup.model,
        reasoning_effort=setup.reasoning_effort,
        min_f1=args.min_f1,
    )
    if args.json:
        print(json.dumps(results_document(runs, setup.cases, ctx), ensure_ascii=False, indent=2))
    else:
        print(render_test(runs, setup.cases, ctx))
    return _exit_code(runs, args.min_f1)


def _unreachable(runs: list[Run]) -> str | None:
    """The first error when no case reached the classifier at all (down, wrong URL)."""
    errors = [o.verdict.error or "" for run in runs for o in run.outcomes]
    if errors and all(e.startswith(("unreachable:", "timeout:")) for e in errors):
        return errors[0]
    return None


def _exit_code(runs: list[Run], min_f1: float | None) -> int:
    code = 0
    for run in runs:
        errors = run.errors
        if errors and len(errors) == len(run.outcomes):
            print(
                f"error: the classifier answered none of the {len(errors)} cases for "
                f"{run.policy.id} (v {run.policy.version}); first error: {errors[0].verdict.error}",
                file=sys.stderr,
            )
            code = 2
        elif errors:
            print(
                f"warning: {len(errors)} of {len(run.outcomes)} cases could not be classified "
                f"for {run.policy.id} (v {run.policy.version}); the metrics cover the rest",
                file=sys.stderr,
            )
    if code:
        return code
    for run, metrics in gate_failures(runs, min_f1):
        f1 = "undefined" if metrics.f1 is None else f"{metrics.f1:.3f}"
        name = f"{run.policy.id} (v {run.policy.version})"
        print(f"F1 {f1} is below --min-f1 {min_f1} for {name}", file=sys.stderr)
        code = 1
    return code


# ---------------------------------------------------------------- policy lint


def _lint_targets(names: list[str]) -> list[Path]:
    paths: list[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = sorted(path.glob("*.md"))
            if not found:
                raise PolicyError(f"{path}: no *.md policy files in this folder")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise PolicyError(f"{path}: no such file")
    return paths


def cmd_lint(args: argparse.Namespace) -> int:
    try:
        reports: list[LintReport] = [lint_file(p) for p in _lint_targets(args.files)]
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(lint_document(reports), ensure_ascii=False, indent=2))
    else:
        print(render_lint(reports))
    return 1 if any(r.errors for r in reports) else 0
