"""Deployment artefacts: the Dockerfile, compose stack and Kubernetes manifests say what the
gateway really accepts (CLI flags, config keys, probe paths, policy files), so a rename in
the code fails here instead of in a cluster."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.config import Config, load_config
from proxy.policies import load_policies

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
POLICIES = ROOT / "policies"


# -- helpers -----------------------------------------------------------------------------------


def parse_cli(argv: list[str]) -> Any:
    """Parse argv with the real CLI parser; argparse's exit on a bad flag becomes a failure."""
    from proxy.cli import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"the CLI rejects {argv!r} (exit {exc.code})")


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def assert_policies_exist(config: Config) -> None:
    available = load_policies(POLICIES)
    for route in config.routes.values():
        for side in (route.input, route.output):
            for ref in side.policies + side.shadow:
                assert ref.id in available, f"route {route.name} names missing policy {ref.id!r}"


def k8s_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def find(docs: list[dict], kind: str, name: str) -> dict:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name}")


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def all_k8s_docs() -> list[dict]:
    docs: list[dict] = []
    for name in kustomization()["resources"]:
        docs.extend(k8s_docs(name))
    return docs


def container(pod_spec: dict, name: str) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def env_value(c: dict, name: str) -> str:
    return next(e["value"] for e in c["env"] if e["name"] == name)


# -- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    instructions = dockerfile_instructions(DEPLOY / "Dockerfile")
    args = dict(a.partition("=")[::2] for w, a in instructions if w == "ARG" and "=" in a)
    froms = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a)
        for w, a in instructions
        if w == "FROM"
    ]
    assert len(froms) >= 2 and " AS builder" in froms[0]
    assert froms[-1].startswith("python:3.11-slim")
    runtime = final_stage(instructions)
    users = [a for w, a in runtime if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    runs = " ".join(a for w, a in instructions if w == "RUN")
    assert "pip wheel" in runs and "pip install" in runs
    assert "[dev" not in runs and "sglang" not in runs.lower()
    assert ("EXPOSE", "8080") in runtime
    assert ("STOPSIGNAL", "SIGTERM") in runtime


def test_dockerfile_copies_paths_that_exist_and_are_not_ignored() -> None:
    instructions = dockerfile_instructions(DEPLOY / "Dockerfile")
    allowed = [
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for word, arg in instructions:
        if word != "COPY" or arg.startswith("--from"):
            continue
        *sources, _dest = arg.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            top = src.rstrip("/").split("/")[0]
            assert top in allowed, f"COPY {src}: excluded by Dockerfile.dockerignore"
    dests = [a.split()[-1] for w, a in instructions if w == "COPY"]
    assert "/app/policies/" in dests and "/etc/safeguard/gateway.yaml" in dests


def test_dockerfile_entrypoint_and_cmd_are_a_real_cli_invocation() -> None:
    runtime = final_stage(dockerfile_instructions(DEPLOY / "Dockerfile"))
    entrypoint = json.loads(next(a for w, a in runtime if w == "ENTRYPOINT"))
    cmd = json.loads(next(a for w, a in runtime if w == "CMD"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["safeguard-gateway"] and "safeguard-gateway" in scripts
    args = parse_cli(cmd)
    assert cmd[0] == "serve"
    assert args.config == "/etc/safeguard/gateway.yaml"
    assert args.host == "0.0.0.0" and int(args.port) == 8080


def test_serve_help_lists_the_flags_the_images_use() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--config", "--host", "--port"):
        assert flag in done.stdout


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_dockerfile_healthcheck_probes_healthz_with_python(
    health_server: ThreadingHTTPServer,
) -> None:
    runtime = final_stage(dockerfile_instructions(DEPLOY / "Dockerfile"))
    check = next(a for w, a in runtime if w == "HEALTHCHECK")
    probe = json.loads(check[check.index("CMD") + 3 :].strip())
    assert probe[:2] == ["python", "-c"] and "curl" not in check
    port = health_server.server_address[1]
    code = probe[2].replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    assert "/healthz" in code
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run(
        [sys.executable, "-c", code.replace("/healthz", "/nope")], capture_output=True, timeout=30
    )
    assert down.returncode != 0


def test_every_proxy_package_ships_in_the_wheel() -> None:
    # setuptools' find (include = proxy*) skips folders without __init__.py: the image,
    # installed from the wheel, would miss them although an editable install works.
    for folder in sorted({p.parent for p in (ROOT / "proxy").rglob("*.py")}):
        if folder.name != "__pycache__":
            assert (folder / "__init__.py").is_file(), (
                f"{folder.relative_to(ROOT)} lacks __init__.py"
            )


# -- compose -----------------------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_gateway_builds_from_the_repo_root_and_waits_for_sglang() -> None:
    gateway = compose()["services"]["gateway"]
    context = (DEPLOY / gateway["build"]["context"]).resolve()
    assert context == ROOT and (context / gateway["build"]["dockerfile"]).is_file()
    assert gateway["depends_on"]["sglang"]["condition"] == "service_healthy"
    assert gateway["env_file"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in gateway["volumes"]}
    assert (DEPLOY / mounts["/etc/safeguard/gateway.yaml"]).is_file()
    assert (DEPLOY / mounts["/app/policies"]).resolve() == POLICIES
    assert "8080:8080" in gateway["ports"]


def test_compose_sglang_serves_safeguard_with_the_reasoning_parser_on_a_gpu() -> None:
    spec = compose()
    sglang = spec["services"]["sglang"]
    assert sglang["image"].startswith("lmsysorg/sglang")
    argv = (
        shlex.split(sglang["command"]) if isinstance(sglang["command"], str) else sglang["command"]
    )
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
    joined = " ".join(argv)
    assert "--model-path openai/gpt-oss-safeguard-20b" in joined
    assert "--reasoning-parser gpt-oss" in joined and "--port 30000" in joined
    assert "/health" in " ".join(sglang["healthcheck"]["test"])
    device = sglang["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert sglang["shm_size"]
    cache = [v for v in sglang["volumes"] if v.endswith(":/root/.cache/huggingface")]
    assert cache and cache[0].split(":")[0] in spec["volumes"]


def test_compose_traces_flow_gateway_to_collector_to_jaeger() -> None:
    services = compose()["services"]
    collector = services["otel-collector"]
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib")
    source = next(v.split(":")[0] for v in collector["volumes"] if "config.yaml" in v)
    otel = yaml.safe_load((DEPLOY / source).read_text())
    assert "http" in otel["receivers"]["otlp"]["protocols"]
    traces = otel["service"]["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    endpoints = [otel["exporters"][name]["endpoint"] for name in traces["exporters"]]
    assert "jaeger:4317" in endpoints
    assert services["jaeger"]["image"].startswith("jaegertracing/")
    assert "16686:16686" in services["jaeger"]["ports"]
    assert env_example()["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"


def test_env_example_and_compose_config_load() -> None:
    env = env_example()
    for key in (
        "ACME_KEY",
        "GATEWAY_ADMIN_KEY",
        "UPSTREAM_API_KEY",
        "UPSTREAM_BASE_URL",
        "SAFEGUARD_BASE_URL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ):
        assert key in env
    config = load_config(DEPLOY / "gateway.compose.yaml", env=env)
    assert config.classifier.base_url == "http://sglang:30000/v1"
    assert config.telemetry.traces == "otlp"
    assert config.policies_dir == "/app/policies"
    assert config.tenants["acme"].keys == (env["ACME_KEY"],)
    assert config.audit.path.startswith("/app/data/")
    assert_policies_exist(config)


# -- Kubernetes --------------------------------------------------------------------------------


def test_every_manifest_is_a_named_kubernetes_object() -> None:
    kinds = set()
    for doc in all_k8s_docs():
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name")
        kinds.add(doc["kind"])
    assert {
        "Namespace",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "StatefulSet",
        "ServiceAccount",
        "Role",
        "RoleBinding",
    } <= kinds


def test_kustomization_lists_files_that_exist_and_every_policy() -> None:
    kust = kustomization()
    for name in kust["resources"]:
        assert (K8S / name).is_file(), name
    generated = {g["name"]: g["files"] for g in kust["configMapGenerator"]}
    for files in generated.values():
        for entry in files:
            assert (K8S / entry.split("=")[-1]).is_file(), entry
    listed = {Path(f).name for f in generated["safeguard-policies"]}
    shipped = {p.name for p in POLICIES.glob("*.md")}
    assert listed == shipped, (
        "deploy/k8s/kustomization.yaml: sync safeguard-policies with policies/"
    )


def test_gateway_deployment_probes_security_and_lifecycle() -> None:
    deployment = find(all_k8s_docs(), "StatefulSet", "safeguard-gateway")
    pod = deployment["spec"]["template"]["spec"]
    gw = container(pod, "gateway")
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gw["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert gw["resources"]["requests"]["cpu"] and gw["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert gw["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert gw["lifecycle"]["preStop"]
    secret_env = {e["name"] for e in gw["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert {"ACME_KEY", "GATEWAY_ADMIN_KEY", "UPSTREAM_API_KEY"} <= secret_env


def test_gateway_deployment_runs_the_cli_on_the_mounted_config() -> None:
    pod = find(all_k8s_docs(), "StatefulSet", "safeguard-gateway")["spec"]["template"]["spec"]
    gw = container(pod, "gateway")
    args = parse_cli(gw["args"])
    port = next(p["containerPort"] for p in gw["ports"] if p["name"] == "http")
    assert int(args.port) == port and args.host == "0.0.0.0"
    mounts = {m["name"]: m["mountPath"] for m in gw["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_dir, config_file = args.config.rsplit("/", 1)
    config_volume = next(n for n, path in mounts.items() if path == config_dir)
    generated = {g["name"]: g["files"] for g in kustomization()["configMapGenerator"]}
    config_map = volumes[config_volume]["configMap"]["name"]
    assert config_file in [Path(f).name for f in generated[config_map]]
    policies_volume = next(n for n, path in mounts.items() if path == "/app/policies")
    assert volumes[policies_volume]["configMap"]["name"] == "safeguard-policies"


def test_k8s_gateway_config_loads_and_points_at_the_router() -> None:
    config = load_config(K8S / "gateway.yaml", env={"ACME_KEY": "k", "GATEWAY_ADMIN_KEY": "a"})
    assert config.policies_dir == "/app/policies"
    assert_policies_exist(config)
    docs = all_k8s_docs()
    gw = container(
        find(docs, "StatefulSet", "safeguard-gateway")["spec"]["template"]["spec"], "gateway"
    )
    url = env_value(gw, "SAFEGUARD_BASE_URL")
    host, port = re.match(r"http://([\w-]+):(\d+)/v1$", url).groups()
    service = find(docs, "Service", host)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]


def test_k8s_audit_goes_to_postgres_from_the_secret_and_nothing_audit_is_on_emptydir() -> None:
    url = "postgresql://u:p@db:5432/safeguard"
    config = load_config(
        K8S / "gateway.yaml",
        env={
            "ACME_KEY": "k",
            "AUDIT_DATABASE_URL": url,
            "VERDICT_CACHE_URL": "redis://valkey:6379/0",
        },
    )
    assert config.audit.url == url and config.audit.retention_days
    docs = all_k8s_docs()
    gateway = find(docs, "StatefulSet", "safeguard-gateway")
    pod = gateway["spec"]["template"]["spec"]
    gw = container(pod, "gateway")
    secret_env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in gw["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secret_env["AUDIT_DATABASE_URL"] == "safeguard-gateway-secrets"
    # the spill file is on the pod's own claim, not on an emptyDir
    mounts = {m["mountPath"]: m["name"] for m in gw["volumeMounts"]}
    spill_dir = config.audit.spill_path.rsplit("/", 1)[0]
    claims = {t["metadata"]["name"] for t in gateway["spec"]["volumeClaimTemplates"]}
    assert mounts[spill_dir] in claims
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert not {name for path, name in mounts.items() if name in empty} - {"tmp"}
    # the shared verdict cache points at the Valkey Service
    assert config.classifier.cache_url == env_value(gw, "VERDICT_CACHE_URL")
    host, port = re.match(r"redis://([\w-]+):(\d+)/0$", env_value(gw, "VERDICT_CACHE_URL")).groups()
    assert int(port) in [p["port"] for p in find(docs, "Service", host)["spec"]["ports"]]
    find(docs, "Deployment", host)


def test_compose_runs_postgres_and_valkey_for_the_gateway() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "valkey"} <= set(services)
    gateway = services["gateway"]
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = env_example()
    for name in ("AUDIT_DATABASE_URL", "VERDICT_CACHE_URL"):  # as compose interpolates them
        env[name] = gateway["environment"][name].replace(
            "${POSTGRES_PASSWORD:-safeguard}", env["POSTGRES_PASSWORD"]
        )
    config = load_config(DEPLOY / "gateway.compose.yaml", env=env)
    assert config.audit.url and "@postgres:5432/" in config.audit.url
    assert config.classifier.cache_url == "redis://valkey:6379/0"


def test_service_hpa_and_pdb_target_the_gateway() -> None:
    docs = all_k8s_docs()
    deployment = find(docs, "StatefulSet", "safeguard-gateway")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find(docs, "Service", "safeguard-gateway")
    assert service["spec"]["selector"].items() <= labels.items()
    hpa = find(docs, "HorizontalPodAutoscaler", "safeguard-gateway")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", "safeguard-gateway")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = find(docs, "PodDisruptionBudget", "safeguard-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_sglang_workers_get_a_gpu_the_parser_and_a_model_cache() -> None:
    workers = find(all_k8s_docs(), "StatefulSet", "sglang-worker")
    pod = workers["spec"]["template"]["spec"]
    sglang = container(pod, "sglang")
    assert sglang["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert sglang["resources"]["limits"]["nvidia.com/gpu"] == 1
    argv = " ".join(sglang["command"] + sglang["args"])
    assert "sglang.launch_server" in argv and "--reasoning-parser gpt-oss" in argv
    assert "--model-path openai/gpt-oss-safeguard-20b" in argv
    assert sglang["readinessProbe"]["httpGet"]["path"] == "/health"
    claims = {t["metadata"]["name"] for t in workers["spec"]["volumeClaimTemplates"]}
    cache = [m for m in sglang["volumeMounts"] if m["mountPath"] == "/root/.cache/huggingface"]
    assert cache and cache[0]["name"] in claims


def test_router_discovers_the_workers_it_routes_to() -> None:
    docs = all_k8s_docs()
    workers = find(docs, "StatefulSet", "sglang-worker")
    worker_labels = workers["spec"]["template"]["metadata"]["labels"]
    worker_port = container(workers["spec"]["template"]["spec"], "sglang")["ports"][0][
        "containerPort"
    ]
    router = find(docs, "Deployment", "sglang-router")
    pod = router["spec"]["template"]["spec"]
    argv = container(pod, "router")["command"] + container(pod, "router")["args"]
    assert "sglang_router.launch_router" in argv
    assert argv[argv.index("--policy") + 1] == "cache_aware"
    assert "--service-discovery" in argv
    key, _, value = argv[argv.index("--selector") + 1].partition("=")
    assert worker_labels.get(key) == value
    assert int(argv[argv.index("--service-discovery-port") + 1]) == worker_port
    role = find(docs, "Role", pod["serviceAccountName"])
    assert {"list", "watch"} <= set(role["rules"][0]["verbs"]) and "pods" in role["rules"][0][
        "resources"
    ]


def _kustomize(directory: Path) -> list[dict]:
    done = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor=LoadRestrictionsNone", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_kustomize_build_wires_generated_configmaps_into_the_gateway() -> None:
    docs = _kustomize(K8S)
    assert all(
        d["metadata"].get("namespace") == "safeguard" for d in docs if d["kind"] != "Namespace"
    )
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    policies = next(m for n, m in maps.items() if n.startswith("safeguard-policies-"))
    assert set(policies["data"]) == {p.name for p in POLICIES.glob("*.md")}
    pod = find(docs, "StatefulSet", "safeguard-gateway")["spec"]["template"]["spec"]
    used = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert policies["metadata"]["name"] in used
    assert any(n.startswith("safeguard-gateway-config-") for n in used)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_policy_reloader_component_adds_the_sidecar(tmp_path: Path) -> None:
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    shutil.copytree(POLICIES, tmp_path / "policies")
    kust = tmp_path / "deploy" / "k8s" / "kustomization.yaml"
    kust.write_text(kust.read_text() + "\ncomponents:\n  - components/policy-reloader\n")
    docs = _kustomize(kust.parent)
    pod = find(docs, "StatefulSet", "safeguard-gateway")["spec"]["template"]["spec"]
    sidecar = container(pod, "policy-reloader")
    assert sidecar["image"] == container(pod, "gateway")["image"]
    assert {"name": "policies", "mountPath": "/app/policies", "readOnly": True} in sidecar[
        "volumeMounts"
    ]
    assert "safeguard-policies" in {
        v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v
    }


def test_policy_reloader_makes_a_running_gateway_reload_edited_policies(make_gateway) -> None:
    running = make_gateway()
    folder = Path(running.config.policies_dir)
    env = {
        **os.environ,
        "POLICIES_DIR": str(folder),
        "RELOAD_URL": running.url + "/admin/reload",
        "GATEWAY_ADMIN_KEY": running.config.admin_keys[0],
        "INTERVAL_S": "0.05",
        "NO_PROXY": "127.0.0.1",
    }
    script = K8S / "components" / "policy-reloader" / "reloader.py"
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert "watching" in proc.stdout.readline()
        before = running.gateway.policies["cheating"].version
        policy = folder / "cheating.md"
        policy.write_text(policy.read_text() + "\nOne more boundary example.\n")
        deadline = time.monotonic() + 10
        while running.gateway.policies["cheating"].version == before:
            assert time.monotonic() < deadline, "the gateway never reloaded"
            time.sleep(0.05)
        assert "reloaded" in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_sizing_has_the_bench_placeholder() -> None:
    assert "<!-- BENCH -->" in (DEPLOY / "SIZING.md").read_text()


def test_every_manifest_validates_against_the_kubernetes_schema() -> None:
    checked = 0
    for path in sorted(K8S.glob("*.yaml")):
        for doc in k8s_docs(path.name):
            if "apiVersion" not in doc or doc.get("kind") == "Kustomization":
                continue  # the gateway config and kustomize's own files are not resources
            kubernetes_validate.validate(doc, "1.31.0", strict=True)  # raises on any error
            checked += 1
    assert checked >= 10
