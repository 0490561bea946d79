"""Workbench fixtures: one loopback SGLang stand-in for the session, policy and golden-set
writers, and a runner that drives `policy ...` through argparse like the real CLI."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.workbench.cli import register
from tests.fakes.classifier import FakeSafeguard
from tests.fakes.serve import ServerHandle, serve


@dataclass
class Safeguard:
    fake: FakeSafeguard
    handle: ServerHandle

    @property
    def url(self) -> str:
        return self.handle.url + "/v1"


@pytest.fixture(scope="session")
def safeguard_server() -> Iterator[Safeguard]:
    fake = FakeSafeguard()
    handle = serve(fake)
    yield Safeguard(fake, handle)
    handle.stop()


@pytest.fixture
def safeguard(safeguard_server: Safeguard) -> Iterator[Safeguard]:
    """The shared fake classifier, reset to answer normally for each test."""
    safeguard_server.fake.reset()
    yield safeguard_server
    safeguard_server.fake.reset()


def policy_source(pid: str, triggers: str, category: str = "V1") -> str:
    """A small policy the fake classifier understands: trigger words flag content."""
    return (
        f"---\nid: {pid}\naction: block\n---\n"
        "## INSTRUCTIONS\n"
        f'Decide whether the content violates the {pid} policy. Return JSON {{"violation": 0|1}}.\n'
        f"<!-- triggers: {triggers} -->\n<!-- category: {category} -->\n"
    )


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[..., Path]:
    def write(pid: str, triggers: str, category: str = "V1", *, folder: Path | None = None) -> Path:
        folder = folder or tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{pid}.md"
        path.write_text(policy_source(pid, triggers, category))
        return path

    return write


@pytest.fixture
def write_cases(tmp_path: Path) -> Callable[..., Path]:
    """Write (content, label[, category]) tuples as JSON lines."""

    def write(rows: list[tuple], name: str = "cases.jsonl") -> Path:
        path = tmp_path / name
        lines = []
        for row in rows:
            item = {"content": row[0], "label": row[1]}
            if len(row) > 2:
                item["category"] = row[2]
            lines.append(json.dumps(item))
        path.write_text("\n".join(lines) + "\n")
        return path

    return write


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., CliResult]:
    """Run `policy ...` through argparse with tmp_path as the working directory."""
    monkeypatch.chdir(tmp_path)  # no stray config/gateway.yaml from the repo

    def run(*argv: object) -> CliResult:
        parser = argparse.ArgumentParser()
        subparsers = parser.add_subparsers()
        register(subparsers)
        args = parser.parse_args([str(a) for a in argv])
        capsys.readouterr()
        code = args.func(args)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run
