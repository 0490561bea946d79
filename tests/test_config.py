"""proxy/config.py: env expansion, validation that names the offending key, the shipped config."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest

from proxy.config import DEV_KEY, ConfigError, PolicyRef, expand_env, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
SHA_OF_OTHER = "sha256:" + hashlib.sha256(b"sk-other").hexdigest()

MINIMAL: dict[str, Any] = {
    "upstreams": {"main": {"base_url": "http://127.0.0.1:9/v1"}},
    "routes": {"open": {"upstream": "main"}},
    "tenants": {"acme": {"keys": ["sk-acme"], "route": "open"}},
}


def config_with(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with the dotted `path` set to `value` (intermediate mappings created)."""
    data = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    node = data
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = value
    return data


def refused(data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    message = str(info.value)
    assert "\n" not in message, "a config error is one line"
    assert message.startswith(f"{info.value.key}: "), "the message opens with the key"
    return info.value


# --- ${VAR} / ${VAR:-default} ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("${A}", {}, ""),
        ("${A:-dflt}", {}, "dflt"),
        ("${A:-dflt}", {"A": ""}, "dflt"),
        ("${A:-dflt}", {"A": "x"}, "x"),
        ("${A:-}", {}, ""),
        ("${A:-http://h:1/v1}", {}, "http://h:1/v1"),
        ("pre-${A}-${B:-b}-post", {"A": "a"}, "pre-a-b-post"),
        ("$A and ${not valid}", {"A": "x"}, "$A and ${not valid}"),
        ("${A}", {"A": "${B}", "B": "nested"}, "${B}"),
    ],
)
def test_expand_env(text: str, env: dict[str, str], expected: str) -> None:
    assert expand_env(text, env) == expected


@pytest.mark.parametrize("secret", ["sk-abc #1", "12345", "on", "a: b", '"quoted"'])
def test_env_values_are_taken_literally(secret: str) -> None:
    config = load_config(REPO / "config" / "gateway.yaml", env={"UPSTREAM_API_KEY": secret})
    assert config.upstreams["default"].api_key == secret


def write_config(tmp_path: Path, server: str) -> Path:
    """The shipped config with its `server:` line replaced by a block-style one."""
    path = tmp_path / "gateway.yaml"
    text = (REPO / "config" / "gateway.yaml").read_text()
    path.write_text(text.replace("server: {host: 127.0.0.1, port: 8080}", server))
    return path


def test_env_values_fill_typed_settings(tmp_path: Path) -> None:
    path = write_config(tmp_path, "server:\n  port: ${PORT:-8080}\n  workers: ${WORKERS:-2}")
    defaults = load_config(path, env={}).server
    assert (defaults.port, defaults.workers) == (8080, 2)
    given = load_config(path, env={"PORT": "9090", "WORKERS": "4"}).server
    assert (given.port, given.workers) == (9090, 4)


def test_an_unset_variable_leaves_an_optional_setting_at_its_default(tmp_path: Path) -> None:
    path = write_config(tmp_path, "server:\n  host: ${GATEWAY_HOST}\n  port: ${GATEWAY_PORT}")
    server = load_config(path, env={}).server
    assert (server.host, server.port) == ("127.0.0.1", 8080)


# --- the shipped config and load_config --------------------------------------------------


def test_shipped_config_starts_with_an_empty_env() -> None:
    config = load_config(REPO / "config" / "gateway.yaml", env={})
    assert config.tenants["dev"].keys == (DEV_KEY,)
    assert config.uses_dev_key
    assert config.server.host == "127.0.0.1"
    assert config.upstreams["default"].base_url == "https://api.openai.com/v1"
    assert config.upstreams["default"].api_key == ""
    assert config.classifier.base_url == "http://127.0.0.1:30000/v1"
    assert config.admin_keys == ()  # "${GATEWAY_ADMIN_KEY:-}" -> empty -> admin disabled
    assert [r.id for r in config.routes["default"].input.policies] == ["prompt-injection", "pii"]
    assert config.source == str(REPO / "config" / "gateway.yaml")


def test_shipped_config_takes_values_from_env() -> None:
    env = {
        "GATEWAY_DEV_KEY": "sk-prod-1",
        "UPSTREAM_BASE_URL": "http://10.0.0.5:8000/v1/",
        "GATEWAY_ADMIN_KEY": "sk-admin",
    }
    config = load_config(REPO / "config" / "gateway.yaml", env=env)
    assert config.tenants["dev"].keys == ("sk-prod-1",)
    assert not config.uses_dev_key
    assert config.upstreams["default"].base_url == "http://10.0.0.5:8000/v1"
    assert config.admin_keys == ("sk-admin",)


def test_load_config_reads_the_process_env_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DEV_KEY", "sk-from-os-environ")
    config = load_config(REPO / "config" / "gateway.yaml")
    assert config.tenants["dev"].keys == ("sk-from-os-environ",)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("server:\n  host: 127.0.0.1\n  port: 8080\nupstreams:\n  main: url: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}: not valid YAML (line 5): mapping values are not allowed here (line 5, column 12)"
    )


def test_invalid_yaml_names_where_an_unclosed_bracket_opened(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("server: {host: 127.0.0.1\n\nupstreams:\n  main: {base_url: x}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "\n" not in message
    assert "while parsing a flow mapping (line 1, column 9)" in message
    assert "expected ',' or '}'" in message


@pytest.mark.parametrize(
    ("side", "key", "known"),
    [
        ("input", "stream", "policies, shadow, mode"),
        ("input", "window_chars", "policies, shadow, mode"),
        ("output", "mode", "policies, shadow, stream, window_chars"),
    ],
)
def test_each_side_refuses_the_other_sides_settings(side: str, key: str, known: str) -> None:
    path = f"routes.open.{side}.{key}"
    error = refused(config_with(path, "window" if key == "stream" else 100))
    assert error.key == path
    assert f"unknown key (expected one of {known}" in str(error)


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot read config .*nope\.yaml: No such file"):
        load_config(tmp_path / "nope.yaml", env={})


# --- accepted shapes ---------------------------------------------------------------------


def test_policy_refs_are_bare_ids_or_id_with_action() -> None:
    side = {"policies": ["pii", {"id": "spam", "action": "annotate"}]}
    config = parse_config(config_with("routes.open.input", side))
    assert config.routes["open"].input.policies == (PolicyRef("pii"), PolicyRef("spam", "annotate"))


def test_policy_ref_mapping_without_action_keeps_the_policy_default() -> None:
    config = parse_config(config_with("routes.open.input.policies", [{"id": "cheating"}]))
    assert config.routes["open"].input.policies == (PolicyRef("cheating", None),)


def test_tenant_model_routes_keep_their_order() -> None:
    data = config_with("routes.strict", {"upstream": "main"})
    data["tenants"]["acme"] = {"keys": ["sk-acme"], "routes": {"gpt-4o*": "strict", "*": "open"}}
    tenant = parse_config(data).tenants["acme"]
    assert tenant.routes == (("gpt-4o*", "strict"), ("*", "open"))
    assert tenant.route is None


def test_numbers_and_booleans_written_as_strings_are_coerced() -> None:
    data = config_with("server.port", "9000")  # what an expanded "${PORT}" gives
    data["classifier"] = {"timeout_s": 5, "cache_ttl_s": "0.5"}
    data["audit"] = {"enabled": "false"}
    config = parse_config(data)
    assert config.server.port == 9000
    assert config.classifier.timeout_s == 5.0
    assert config.classifier.cache_ttl_s == 0.5
    assert config.audit.enabled is False


@pytest.mark.parametrize(("window", "overlap"), [(16, 0), (16, 15), (400, 120)])
def test_window_bounds_accepted(window: int, overlap: int) -> None:
    side = {"window_chars": window, "overlap_chars": overlap}
    output = parse_config(config_with("routes.open.output", side)).routes["open"].output
    assert (output.window_chars, output.overlap_chars) == (window, overlap)


def test_empty_keys_are_dropped() -> None:
    data = config_with("admin", {"keys": [""]})
    data["tenants"]["acme"]["keys"] = ["", "sk-acme"]
    config = parse_config(data)
    assert config.admin_keys == ()
    assert config.tenants["acme"].keys == ("sk-acme",)


# --- refusals: each names its dotted key -------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("bogus", 1, "bogus"),
        ("server.bogus", 1, "server.bogus"),
        ("upstreams.main.bogus", 1, "upstreams.main.bogus"),
        ("classifier.bogus", 1, "classifier.bogus"),
        ("routes.open.bogus", 1, "routes.open.bogus"),
        ("routes.open.input.bogus", 1, "routes.open.input.bogus"),
        ("routes.open.output.bogus", 1, "routes.open.output.bogus"),
        (
            "routes.open.input.policies",
            [{"id": "pii", "bogus": 1}],
            "routes.open.input.policies[0].bogus",
        ),
        ("tenants.acme.bogus", 1, "tenants.acme.bogus"),
        ("admin.bogus", 1, "admin.bogus"),
        ("audit.bogus", 1, "audit.bogus"),
        ("telemetry.bogus", 1, "telemetry.bogus"),
    ],
)
def test_unknown_keys_are_refused_at_every_level(path: str, value: Any, key: str) -> None:
    error = refused(config_with(path, value))
    assert error.key == key
    assert "unknown key" in str(error)


@pytest.mark.parametrize(
    ("path", "value", "key", "problem"),
    [
        ("server", "localhost", "server", "must be a mapping"),
        ("upstreams", ["main"], "upstreams", "must be a mapping"),
        ("server.port", "http", "server.port", "must be int"),
        ("server.port", True, "server.port", "must be int"),
        ("classifier.timeout_s", "fast", "classifier.timeout_s", "must be float"),
        ("audit.enabled", "yes", "audit.enabled", "must be bool"),
        ("upstreams.main.base_url", "ftp://h", "upstreams.main.base_url", "http(s) URL"),
        ("upstreams.main.headers", ["x"], "upstreams.main.headers", "must be a mapping"),
        ("routes.open.input.policies", "pii", "routes.open.input.policies", "must be a list"),
        (
            "routes.open.output.shadow",
            [{"action": "block"}],
            "routes.open.output.shadow[0]",
            "must be a policy id",
        ),
        ("routes.open.output.window_chars", "big", "routes.open.output.window_chars", "int"),
        ("tenants.acme.keys", "sk-acme", "tenants.acme.keys", "list of strings"),
        ("tenants.acme.routes", ["open"], "tenants.acme.routes", "must map model globs"),
        ("admin.keys", [1], "admin.keys", "list of strings"),
    ],
)
def test_wrong_types_are_refused(path: str, value: Any, key: str, problem: str) -> None:
    error = refused(config_with(path, value))
    assert error.key == key
    assert problem in str(error)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("routes.open.input.mode", "fast"),
        ("routes.open.output.stream", "chunked"),
        ("routes.open.fail", "maybe"),
        ("classifier.reasoning_effort", "extreme"),
        ("audit.content", "everything"),
        ("telemetry.traces", "jaeger"),
        ("telemetry.metrics", "statsd"),
    ],
)
def test_bad_choices_are_refused_listing_the_choices(path: str, value: str) -> None:
    error = refused(config_with(path, value))
    assert error.key == path
    assert "must be one of" in str(error)
    assert repr(value) in str(error)


def test_bad_policy_action_names_the_entry() -> None:
    error = refused(config_with("routes.open.input.policies", ["pii", {"id": "x", "action": "no"}]))
    assert error.key == "routes.open.input.policies[1].action"
    assert "block, redact, annotate, log" in str(error)


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("upstreams", {}, "upstreams"),
        ("routes", {}, "routes"),
        ("tenants", {}, "tenants"),
        ("routes.open", {"fail": "open"}, "routes.open.upstream"),
        ("upstreams.main", {"api_key": "x"}, "upstreams.main.base_url"),
        ("tenants.acme.keys", [""], "tenants.acme.keys"),
        ("tenants.acme", {"keys": ["sk-acme"]}, "tenants.acme.route"),
    ],
)
def test_missing_required_values_are_refused(path: str, value: Any, key: str) -> None:
    assert refused(config_with(path, value)).key == key


def test_route_naming_a_missing_upstream() -> None:
    error = refused(config_with("routes.open.upstream", "nowhere"))
    assert error.key == "routes.open.upstream"
    assert "have main" in str(error)


@pytest.mark.parametrize(
    ("tenant", "key"),
    [
        ({"keys": ["sk-acme"], "route": "nowhere"}, "tenants.acme.route"),
        ({"keys": ["sk-acme"], "routes": {"gpt-*": "nowhere"}}, "tenants.acme.routes"),
        (
            {"keys": ["sk-acme"], "route": "nowhere", "routes": {"gpt-*": "open"}},
            "tenants.acme.route",
        ),
    ],
)
def test_tenant_naming_a_missing_route(tenant: dict, key: str) -> None:
    error = refused(config_with("tenants.acme", tenant))
    assert error.key == key
    assert "'nowhere'" in str(error)


def test_a_key_shared_by_two_tenants_is_refused() -> None:
    data = config_with("tenants.globex", {"keys": ["sk-other", "sk-acme"], "route": "open"})
    error = refused(data)
    assert error.key == "tenants.globex.keys"
    assert "'acme'" in str(error)
    assert "sk-acme" not in str(error), "errors never echo a key"


def test_a_plain_key_and_its_digest_in_two_tenants_are_refused() -> None:
    data = config_with("tenants.globex", {"keys": [SHA_OF_OTHER], "route": "open"})
    data["tenants"]["acme"]["keys"] = ["sk-other"]
    assert refused(data).key == "tenants.globex.keys"


@pytest.mark.parametrize("key", ["sha256:abc", "sha256:" + "g" * 64, "sha256:" + "a" * 65])
def test_bad_sha256_keys_are_refused(key: str) -> None:
    error = refused(config_with("tenants.acme.keys", [key]))
    assert error.key == "tenants.acme.keys"
    assert "64 hex digits" in str(error)


@pytest.mark.parametrize(
    ("side", "key"),
    [
        ({"window_chars": 15}, "routes.open.output.window_chars"),
        ({"window_chars": 100, "overlap_chars": 100}, "routes.open.output.overlap_chars"),
        ({"overlap_chars": -1}, "routes.open.output.overlap_chars"),
    ],
)
def test_window_and_overlap_bounds(side: dict, key: str) -> None:
    assert refused(config_with("routes.open.output", side)).key == key


def test_references_work_unquoted_inside_flow_mappings(tmp_path):
    text = (
        "server: {host: 127.0.0.1, port: ${PORT:-8080}}\n"
        "upstreams: {default: {base_url: '${UP:-http://127.0.0.1:1/v1}', api_key: ${KEY}}}\n"
        "tenants: {t: {keys: [${TENANT_KEY:-dev-key}], route: r}}\n"
        "routes: {r: {upstream: default}}\n"
    )
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    config = load_config(path, env={"KEY": "sk-a#b: c"})
    assert config.server.port == 8080
    assert config.upstreams["default"].api_key == "sk-a#b: c"
    assert config.tenants["t"].keys == ("dev-key",)
    assert load_config(path, env={"PORT": "9000"}).server.port == 9000


def test_a_missing_relative_policies_dir_names_the_resolved_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.policies import PolicyError, load_policies

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError) as info:
        load_policies("policies")
    assert str(info.value) == (
        f"{tmp_path / 'policies'}: policies_dir is not a directory (resolved from {tmp_path})"
    )


def test_the_classifier_and_policies_dir_come_from_the_environment() -> None:
    env = {
        "SAFEGUARD_RUNTIME": "ollama",
        "SAFEGUARD_BASE_URL": "http://127.0.0.1:11434/v1",
        "SAFEGUARD_MODEL": "gpt-oss-safeguard:20b",
        "SAFEGUARD_API_KEY": "sk-hosted",
        "SAFEGUARD_TIMEOUT_S": "60",
        "SAFEGUARD_POLICIES_DIR": "/etc/safeguard/policies",
    }
    config = load_config(REPO / "config" / "gateway.yaml", env=env)
    c = config.classifier
    assert (c.runtime, c.base_url, c.model, c.api_key, c.timeout_s) == (
        "ollama",
        "http://127.0.0.1:11434/v1",
        "gpt-oss-safeguard:20b",
        "sk-hosted",
        60.0,
    )
    assert config.policies_dir == "/etc/safeguard/policies"
    defaults = load_config(REPO / "config" / "gateway.yaml", env={})
    assert (defaults.classifier.runtime, defaults.classifier.model) == (
        "sglang",
        "openai/gpt-oss-safeguard-20b",
    )
    assert defaults.policies_dir == "policies"


def test_an_unknown_runtime_lists_the_runtimes() -> None:
    error = refused(config_with("classifier.runtime", "llamafile"))
    assert str(error) == (
        "classifier.runtime: must be one of sglang, vllm, ollama, openai-compatible "
        "(got 'llamafile')"
    )
