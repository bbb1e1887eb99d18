"""Validate KEDA ScaledObjects offline: ``python deploy/check_scaledobject.py FILE...``; exit 0/1.

kubernetes-validate ships schemas for Kubernetes' own kinds only, so for a ScaledObject (a KEDA CRD)
it can only say "no schema". This checks what can be checked without KEDA's CRD at hand:

* ``metadata`` against Kubernetes' ObjectMeta schema and
  ``spec.advanced.horizontalPodAutoscalerConfig.behavior`` against autoscaling/v2
  HorizontalPodAutoscalerBehavior (KEDA hands it to the HPA as is), both from kubernetes-validate's
  bundled (strict) schemas;
* the rest of ``spec`` against the small schema below, written from KEDA's ScaledObject reference
  (v2): unknown keys are errors, types are checked, trigger metadata values must be strings;
* for ``type: kafka`` triggers: bootstrapServers, consumerGroup and topic are set and lagThreshold is
  a positive number;
* minReplicaCount <= maxReplicaCount <= the ``streamworker.io/topic-partitions`` annotation, since a
  consumer beyond the partition count only adds rebalances.

What it cannot check: fields KEDA added after v2.x that are missing below, and anything only the
KEDA operator verifies at admission (the target exists, the scaler can reach the brokers).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

PARTITIONS_ANNOTATION = "streamworker.io/topic-partitions"
KUBERNETES_VERSION = kv.latest_version()

_INT = {"type": "integer", "minimum": 0}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["scaleTargetRef", "triggers"],
    "properties": {
        "scaleTargetRef": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "envSourceContainerName": {"type": "string"},
            },
        },
        "pollingInterval": _INT,
        "cooldownPeriod": _INT,
        "initialCooldownPeriod": _INT,
        "idleReplicaCount": _INT,
        "minReplicaCount": _INT,
        "maxReplicaCount": {"type": "integer", "minimum": 1},
        "fallback": {
            "type": "object",
            "additionalProperties": False,
            "required": ["failureThreshold", "replicas"],
            "properties": {
                "failureThreshold": _INT,
                "replicas": _INT,
                "behavior": {"type": "string"},
            },
        },
        "advanced": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "restoreToOriginalReplicaCount": {"type": "boolean"},
                "horizontalPodAutoscalerConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                },
                "scalingModifiers": {"type": "object"},
            },
        },
        "triggers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "metadata"],
                "properties": {
                    "type": {"type": "string", "minLength": 1},
                    "name": {"type": "string"},
                    "metadata": _STRING_MAP,
                    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                    "useCachedMetrics": {"type": "boolean"},
                    "authenticationRef": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                    },
                },
            },
        },
    },
}
KAFKA_REQUIRED = ("bootstrapServers", "consumerGroup", "topic")


def _kubernetes_validator(definition_file: str) -> jsonschema.protocols.Validator:
    """A validator for one of kubernetes-validate's bundled (strict) schema files."""
    folder = f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"
    schema = kv.schema_contents(f"{folder}/{definition_file}", KUBERNETES_VERSION)
    definitions = kv.schema_contents(f"{folder}/_definitions.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    validator: jsonschema.protocols.Validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return validator


def _errors(validator: jsonschema.protocols.Validator, document: object, where: str) -> list[str]:
    found = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(part) for part in error.absolute_path)
        found.append(f"{where}{'.' + path if path else ''}: {error.message}")
    return found


def check(document: dict[str, Any]) -> list[str]:
    """Problems of one ScaledObject, as ``path: message`` lines (empty when it is fine)."""
    problems: list[str] = []
    if document.get("apiVersion") != "keda.sh/v1alpha1" or document.get("kind") != "ScaledObject":
        return [f"not a keda.sh/v1alpha1 ScaledObject: {document.get('apiVersion')} {document.get('kind')}"]
    unknown = set(document) - {"apiVersion", "kind", "metadata", "spec"}
    problems += [f"{key}: unknown top-level key" for key in sorted(unknown)]
    metadata = document.get("metadata", {})
    problems += _errors(_kubernetes_validator("objectmeta-meta-v1.json"), metadata, "metadata")
    spec = document.get("spec", {})
    problems += _errors(jsonschema.Draft202012Validator(SPEC_SCHEMA), spec, "spec")
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        validator = _kubernetes_validator("horizontalpodautoscalerbehavior-autoscaling-v2.json")
        problems += _errors(validator, behavior, "spec.advanced.horizontalPodAutoscalerConfig.behavior")
    for index, trigger in enumerate(spec.get("triggers", [])):
        if trigger.get("type") != "kafka":
            continue
        where = f"spec.triggers.{index}.metadata"
        settings = trigger.get("metadata", {})
        problems += [
            f"{where}.{key}: required for the kafka scaler" for key in KAFKA_REQUIRED if not settings.get(key)
        ]
        threshold = settings.get("lagThreshold", "10")
        if not str(threshold).isdigit() or int(threshold) < 1:
            problems.append(f"{where}.lagThreshold: must be a positive whole number, got {threshold!r}")
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if isinstance(low, int) and isinstance(high, int) and low > high:
        problems.append(f"spec.minReplicaCount: {low} is above maxReplicaCount {high}")
    partitions = metadata.get("annotations", {}).get(PARTITIONS_ANNOTATION)
    if partitions is None:
        problems.append(
            f"metadata.annotations: {PARTITIONS_ANNOTATION} (the topic's partition count) is missing"
        )
    elif not str(partitions).isdigit():
        problems.append(f"metadata.annotations.{PARTITIONS_ANNOTATION}: not a number: {partitions!r}")
    elif isinstance(high, int) and high > int(partitions):
        problems.append(
            f"spec.maxReplicaCount: {high} is above the topic's {partitions} partitions "
            "(replicas beyond it get no partition)"
        )
    return problems


def main(argv: list[str]) -> int:
    failed = False
    for name in argv:
        documents = [doc for doc in yaml.safe_load_all(Path(name).read_text(encoding="utf-8")) if doc]
        for document in documents:
            label = f"{name} {document.get('kind', '?')}/{document.get('metadata', {}).get('name', '?')}"
            problems = check(document)
            for problem in problems:
                print(f"ERROR {label}: {problem}")
            if not problems:
                print(
                    f"INFO {label} passed (ObjectMeta and HPA behavior checked against "
                    f"Kubernetes {KUBERNETES_VERSION})"
                )
            failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
