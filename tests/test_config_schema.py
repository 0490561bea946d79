"""`safeguard-gateway config schema`: the JSON Schema editors use, checked against every
config file the repository ships (as written, `${VAR}` references and all)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from proxy.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    [
        *REPO.glob("config/*.yaml"),
        *REPO.glob("examples/configs/*.yaml"),
        REPO / "deploy" / "gateway.compose.yaml",
        REPO / "deploy" / "k8s" / "gateway.yaml",
    ]
)
REFERENCE = re.compile(r"\$\{[^}]*\}")


def printed_schema(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["config", "schema"]) == 0
    return json.loads(capsys.readouterr().out)


def as_written(path: Path) -> Any:
    """The file as an editor sees it: `${...}` kept verbatim (quoted so YAML keeps it whole,
    as the gateway's own loader does with its placeholders)."""
    held: list[str] = []

    def hold(match: re.Match[str]) -> str:
        held.append(match.group(0))
        return f"__REF_{len(held) - 1}__"

    def restore(data: Any) -> Any:
        if isinstance(data, str):
            return re.sub(r"__REF_(\d+)__", lambda m: held[int(m.group(1))], data)
        if isinstance(data, list):
            return [restore(item) for item in data]
        if isinstance(data, dict):
            return {key: restore(value) for key, value in data.items()}
        return data

    return restore(yaml.safe_load(REFERENCE.sub(hold, path.read_text())))


def test_the_printed_schema_is_a_valid_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    jsonschema.Draft202012Validator.check_schema(printed_schema(capsys))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_validates(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jsonschema.validate(as_written(path), printed_schema(capsys))


def test_the_shipped_set_is_not_empty() -> None:
    assert len(SHIPPED) >= 4
    assert all(path.is_file() for path in SHIPPED)


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        ({"upstream": "u", "input": {"stream": "window"}}, "stream"),
        ({"upstream": "u", "output": {"mode": "parallel"}}, "mode"),
        ({"upstream": "u", "input": {"mode": "fast"}}, "fast"),
        ({"upstream": "u", "bogus": 1}, "bogus"),
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(
    route: dict[str, Any], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:1/v1"}},
        "tenants": {"t": {"keys": ["k"], "route": "r"}},
        "routes": {"r": route},
    }
    with pytest.raises(jsonschema.ValidationError, match=problem):
        jsonschema.validate(data, printed_schema(capsys))


def test_env_references_are_accepted_where_numbers_and_choices_go(
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = {
        "server": {"port": "${PORT:-8080}"},
        "upstreams": {"u": {"base_url": "${UP}"}},
        "tenants": {"t": {"keys": ["${KEY}"], "route": "r"}},
        "routes": {"r": {"upstream": "u", "input": {"mode": "${MODE:-sequential}"}}},
        "audit": {"enabled": "${AUDIT:-true}"},
    }
    jsonschema.validate(data, printed_schema(capsys))


def test_settings_comments_become_descriptions_for_editors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    definitions = printed_schema(capsys)["$defs"]
    window_ms = definitions["OutputSide"]["properties"]["window_ms"]
    assert window_ms["description"] == "the longest text waits in a window before it is checked"
    fail = definitions["Route"]["properties"]["fail"]
    assert fail["description"] == "classifier unusable: closed | open"
