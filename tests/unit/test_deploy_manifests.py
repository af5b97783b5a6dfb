"""The deployment files agree with the code: every variable they set is a setting (and
their values make valid settings), every command they run is a ``dealtrail`` command,
and every port and probe path is one the process really serves.

No container runtime runs here, so the files are parsed (PyYAML) and checked against
the settings class, the command line's parser and the routes of the API and of the
worker's metrics endpoint."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from starlette.routing import Match

from services.cli import build_parser
from services.pipeline_api.main import create_app
from services.runtime.metrics import endpoint_app
from services.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SETTINGS = {field.alias for field in Settings.model_fields.values()}
# What the image's environment may set besides settings: the interpreter's own.
PROCESS_VARIABLES = {
    "PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
}  # fmt: skip


async def _no_scrape() -> bytes:
    return b""


class Routes:
    """Whether an app answers GET at a path, as its router decides."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __contains__(self, path: object) -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
        return any(route.matches(scope)[0] == Match.FULL for route in self.app.routes)


API_ROUTES = Routes(create_app(Settings()))
WORKER_ROUTES = Routes(endpoint_app(_no_scrape))


def parse_command(argv: list[str]) -> Any:
    """The parsed arguments of ``dealtrail ARGV`` (fails the test when it does not parse)."""
    assert argv and argv[0] != "dealtrail", argv
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`dealtrail {' '.join(argv)}` is not a command of the command line")


def serves(argv: list[str], env: dict[str, str]) -> tuple[int, Routes]:
    """(port, GET routes) of what ``dealtrail ARGV`` serves with this environment."""
    args = parse_command(argv)
    if args.command == "serve":
        return args.port, API_ROUTES
    assert (args.command, args.projections_command) == ("projections", "run"), argv
    port = args.metrics_port if args.metrics_port is not None else int(
        env.get("DEALTRAIL_WORKER_METRICS_PORT", "0")
    )  # fmt: skip
    assert port, f"{argv}: a worker in a deployment serves its metrics and liveness"
    return port, WORKER_ROUTES


def check_settings(env: dict[str, str], files: dict[str, str], tmp_path: Path) -> Settings:
    """Every name is a setting, and the values make valid settings (files mounted at the
    paths named are written to ``tmp_path`` first)."""
    unknown = set(env) - SETTINGS
    assert not unknown, f"not settings: {sorted(unknown)}"
    values = dict(env)
    for path, content in files.items():
        local = tmp_path / path.strip("/").replace("/", "_")
        local.write_text(content)
        for name, value in env.items():
            if value == path:
                values[name] = str(local)
    return Settings(**values)  # type: ignore[arg-type]


def url_of(command: list[str]) -> tuple[int, str]:
    """(port, path) of the URL a health-check command fetches."""
    (url,) = re.findall(r"https?://[^'\" ]+", " ".join(command))
    parts = urlsplit(url)
    assert parts.port is not None
    return parts.port, parts.path


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_image_is_multi_stage_non_root_and_serves_the_api() -> None:
    steps = dockerfile()
    assert sum(1 for word, _ in steps if word == "FROM") >= 2
    last_stage = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    (user,) = [rest for word, rest in last_stage if word == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    env: dict[str, str] = {}
    for word, rest in last_stage:
        if word == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(rest)))
    assert not set(env) - SETTINGS - PROCESS_VARIABLES
    assert {"DEALTRAIL_DATA_DIR", "DEALTRAIL_LOG_FORMAT"} <= set(env)
    (entrypoint,) = [json.loads(rest) for word, rest in last_stage if word == "ENTRYPOINT"]
    (cmd,) = [json.loads(rest) for word, rest in last_stage if word == "CMD"]
    assert entrypoint == ["dealtrail"]
    assert cmd[0] == "serve"
    port, routes = serves(cmd, {})
    exposed = [rest for word, rest in last_stage if word == "EXPOSE"]
    assert exposed == [str(port)]
    (healthcheck,) = [rest for word, rest in last_stage if word == "HEALTHCHECK"]
    check_port, check_path = url_of([healthcheck])
    assert (check_port, check_path) == (port, "/health/live")
    assert check_path in routes


# --- compose -----------------------------------------------------------------------------------


def interpolate(value: Any) -> str:
    """Compose's ``${NAME:?message}`` and ``${NAME:-default}`` with a stand-in value."""
    return re.sub(r"\$\{[A-Z_]+:[?-][^}]*\}", "stand-in-value-0123456789", str(value))


def test_compose_runs_postgres_two_api_replicas_a_worker_and_its_standby(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert "postgres" in services
    image_cmd = [rest for word, rest in dockerfile() if word == "CMD"][-1]
    secrets = {
        f"/run/secrets/{name}": (DEPLOY / f"{spec['file']}.example").read_text()
        for name, spec in compose["secrets"].items()
    }
    roles: dict[str, list[str]] = {"serve": [], "projections": []}
    for name, service in services.items():
        if "build" not in service:
            continue
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        argv = service.get("command", json.loads(image_cmd))
        env = {key: interpolate(value) for key, value in service["environment"].items()}
        port, routes = serves(argv, env)
        check_settings(env, secrets, tmp_path)
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"]
        healthcheck = service.get("healthcheck")
        if healthcheck is not None:
            assert url_of(healthcheck["test"]) == (port, "/health/live")
        for mapping in service.get("ports", []):
            assert str(mapping).rsplit(":", 1)[1] == str(port)
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        roles[argv[0]] += [name] * service.get("deploy", {}).get("replicas", 1)
        assert "/health/live" in routes
    assert len(roles["serve"]) == 2
    assert len(roles["projections"]) == 2  # a worker and its standby


# --- Kubernetes ------------------------------------------------------------------------------


def k8s_objects() -> Iterator[dict[str, Any]]:
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield doc


def by_kind() -> dict[str, dict[str, dict[str, Any]]]:
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in k8s_objects():
        if obj["kind"] == "Kustomization":
            continue
        found.setdefault(obj["kind"], {})[obj["metadata"].get("name", "")] = obj
    return found


def test_the_route_check_tells_real_routes_from_others() -> None:
    assert "/health/ready" in API_ROUTES
    assert "/v1/deals/00000000-0000-0000-0000-000000000000" in API_ROUTES
    assert "/health/readiness" not in API_ROUTES
    assert "/metrics" in WORKER_ROUTES
    assert "/health/ready" not in WORKER_ROUTES


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"]
    present = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(present)


def container_port(container: dict[str, Any], port: int | str) -> int:
    for spec in container["ports"]:
        if port in (spec["containerPort"], spec.get("name")):
            return int(spec["containerPort"])
    raise AssertionError(f"{container['name']} has no port {port!r}")


def test_kubernetes_deployments_agree_with_the_code(tmp_path: Path) -> None:
    objects = by_kind()
    config_maps, secrets = objects["ConfigMap"], objects["Secret"]
    secret_data = {
        name: {**s.get("data", {}), **s.get("stringData", {})} for name, s in secrets.items()
    }
    commands = {}
    for name, deployment in objects["Deployment"].items():
        pod = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"][
            "labels"].items()  # fmt: skip
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["spec"]["containers"]
        assert container.get("command", ["dealtrail"]) == ["dealtrail"]
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                assert ref["key"] in secret_data[ref["name"]], ref
                env[item["name"]] = str(secret_data[ref["name"]][ref["key"]])
        files = {}
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "secret" in volume:
                for item in volume["secret"]["items"]:
                    content = secret_data[volume["secret"]["secretName"]][item["key"]]
                    files[f"{mount['mountPath']}/{item['path']}"] = content
        settings = check_settings(env, files, tmp_path)
        assert settings.environment == "production"
        assert settings.api_key_map, "the keys file holds keys"
        port, routes = serves(container["args"], env)
        assert port in {p["containerPort"] for p in container["ports"]}
        probes = [container[k] for k in ("livenessProbe", "readinessProbe", "startupProbe")
                  if k in container]  # fmt: skip
        assert "livenessProbe" in container
        for probe in probes:
            assert probe["httpGet"]["path"] in routes, probe
            assert container_port(container, probe["httpGet"]["port"]) == port
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        annotations = pod["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/path") in routes
        assert int(annotations["prometheus.io/port"]) == port
        commands[container["args"][0]] = (name, deployment, pod, port)

    api_name, _, api_pod, api_port = commands["serve"]
    _, worker, _, _ = commands["projections"]
    assert worker["spec"]["replicas"] == 2  # one works, one stands by on the advisory locks
    api_container = api_pod["spec"]["containers"][0]
    assert api_container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert api_container["livenessProbe"]["httpGet"]["path"] == "/health/live"

    (service,) = objects["Service"].values()
    assert service["spec"]["selector"].items() <= api_pod["metadata"]["labels"].items()
    for port in service["spec"]["ports"]:
        assert container_port(api_container, port["targetPort"]) == api_port

    (hpa,) = objects["HorizontalPodAutoscaler"].values()
    assert (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"]) == (
        "Deployment", api_name)  # fmt: skip
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (pdb,) = objects["PodDisruptionBudget"].values()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= api_pod["metadata"]["labels"].items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


# --- systemd -------------------------------------------------------------------------------------


def test_the_systemd_units_and_their_environment_file_agree_with_the_code(tmp_path: Path) -> None:
    for unit in ("dealtrail-api.service", "dealtrail-worker.service"):
        (exec_start,) = re.findall(r"^ExecStart=(.*)$", (DEPLOY / unit).read_text(), re.M)
        program, *argv = shlex.split(exec_start)
        assert program.endswith("/bin/dealtrail")
        parse_command(argv)
    env = {}
    for line in (DEPLOY / "dealtrail.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    check_settings(env, {}, tmp_path)
