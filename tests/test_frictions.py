"""A newcomer's first hour, each friction once found by walking it: the README's recipe and
sample config run as printed, policy ids and file names, CLI version and pipes, packaging
metadata, and one clear line when the classifier is down."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import httpx
import pytest

from proxy.app import build_app
from proxy.cli import main
from proxy.config import load_config
from proxy.policies import PolicyError, load_policies
from tests.fakes.serve import free_socket, serve

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent


def readme_block(after_heading: str, language: str) -> str:
    """The first fenced block of `language` after a README heading."""
    section = README.split(after_heading, 1)[1]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block after {after_heading!r}"
    return textwrap.dedent(match.group(1))  # blocks inside a list item are indented


def repo_copy(tmp_path: Path) -> Path:
    """What a clean clone has that the commands read: policies, golden sets, config."""
    for folder in ("policies", "config", "examples/golden"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    return tmp_path


def sh(line: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    run_env = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=run_env, capture_output=True, text=True, timeout=120
    )


# --- policy ids and file names --------------------------------------------------------------


def test_a_duplicate_id_names_both_files(tmp_path: Path) -> None:
    shutil.copy(REPO / "policies" / "spam.md", tmp_path / "spam.md")
    shutil.copy(REPO / "policies" / "spam.md", tmp_path / "spam-v2.md")
    with pytest.raises(PolicyError) as info:
        load_policies(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'spam.md'}: duplicate policy id 'spam'")
    assert f"already used by {tmp_path / 'spam-v2.md'}" in message
    assert "give the copy its own `id:`" in message


def test_the_policy_iteration_recipe_runs_as_written(tmp_path: Path, classifier) -> None:
    root = repo_copy(tmp_path)
    env = {"SAFEGUARD_BASE_URL": classifier[1].url + "/v1"}
    for line in readme_block("### Iterating on a policy", "bash").splitlines():
        done = sh(line, root, **env)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr
    assert "id: spam-v2" in (root / "policies" / "spam-v2.md").read_text()
    # step 3: the copy shadows the original on a route, and the config still checks
    config = (root / "config" / "gateway.yaml").read_text()
    config = config.replace(
        "input:  {policies: [prompt-injection, pii], mode: sequential}",
        "input:  {policies: [prompt-injection, pii, spam], shadow: [spam-v2]}",
    )
    (root / "config" / "gateway.yaml").write_text(config)
    assert sh("safeguard-gateway check-config", root).returncode == 0


# --- the README's sample config ---------------------------------------------------------------


def test_the_readme_sample_config_runs_as_printed(tmp_path: Path, monkeypatch) -> None:
    root = repo_copy(tmp_path)
    path = root / "sample.yaml"
    path.write_text(readme_block("## Configuration", "yaml"))
    monkeypatch.chdir(root)
    env = {"UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1"}
    assert main(["check-config", "--config", str(path)]) == 0
    config = load_config(path, env=env)
    assert config.tenants["acme"].keys == ("sk-acme-dev",)
    handle = serve(build_app(config), lifespan="on")
    try:
        assert httpx.get(handle.url + "/healthz").json() == {"status": "ok"}
    finally:
        handle.stop()


# --- CLI ------------------------------------------------------------------------------------


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert re.fullmatch(r"safeguard-gateway \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`policy lint policies | head -1`: the reader is gone before the output is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "policy", "lint", "policies"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=60,
        )
    finally:
        os.close(write)
    assert done.stderr == ""
    assert done.returncode == 0


def test_policy_test_with_the_classifier_down_is_one_line(tmp_path: Path) -> None:
    sock = free_socket()  # bound, not listening: refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    try:
        done = sh(
            f"safeguard-gateway policy test spam --cases examples/golden/spam.jsonl "
            f"--classifier {url}",
            REPO,
        )
    finally:
        sock.close()
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: the classifier at {url} is unreachable (unreachable: ")


# --- packaging --------------------------------------------------------------------------------


def test_pep_639_license_metadata() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", []))
    assert "setuptools>=77" in project["build-system"]["requires"]


def test_policy_test_refuses_a_detectors_only_policy() -> None:
    done = sh(
        "safeguard-gateway policy test examples/no-model-policies/pii-patterns.md "
        "--cases examples/golden/pii.jsonl --classifier http://127.0.0.1:9/v1",
        REPO,
    )
    assert done.returncode == 2
    assert "pii-patterns is detectors-only" in done.stderr
