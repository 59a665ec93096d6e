"""Rendering ops/k8s and reading the objects: shared by the manifest checks and the kube play run."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "k8s"
DEFINITIONS = ROOT / "ops" / "rabbitmq" / "definitions.json"
DOCS = ROOT / "docs" / "kubernetes.md"
KUBERNETES_VERSION = "1.32"
OVERLAYS = ("dev", "production", "gpu")
WORKLOADS = ("Deployment", "StatefulSet", "Job")
KEDA = "keda.sh/v1alpha1"
# workload -> the fedbus command its containers (and initContainers: `db upgrade`) run
ROLES = {"coordinator": "coordinator", "aggregator": "aggregator", "client": "client", "api": "api", "migrate": "db"}
BACKING_IMAGES = {"rabbitmq": "rabbitmq:3.13-management", "postgres": "postgres:15"}
FEDBUS_UID = 10001
# Secrets the production overlay reads and the operator creates (docs/kubernetes.md lists each with its keys).
PRODUCTION_SECRETS = {
    "fedbus-migrate": {"FEDBUS_DATABASE_URL"},
    "fedbus-coordinator": {"FEDBUS_DATABASE_URL", "FEDBUS_AMQP_URL", "FEDBUS_ENROLLMENT_TOKEN", "FEDBUS_TOKEN_SECRET"},
    "fedbus-aggregator": {"FEDBUS_DATABASE_URL", "FEDBUS_AMQP_URL"},
    "fedbus-client": {"FEDBUS_AMQP_URL", "FEDBUS_ENROLLMENT_TOKEN"},
    "fedbus-api": {"FEDBUS_DATABASE_URL", "FEDBUS_AMQP_URL", "FEDBUS_API_TOKENS"},
    "fedbus-keda-rabbitmq": {"host"},
    "fedbus-coordinator-tls": {"tls.crt", "tls.key", "ca.crt"},
}
# Variables the manifests set that are not in ops.settings.VARIABLES, each with the file that reads it.
OTHER_FEDBUS_VARIABLES = {
    "FEDBUS_API_TOKENS": ROOT / "services" / "api" / "settings.py",
    "FEDBUS_LOG_FORMAT": ROOT / "services" / "cli" / "main.py",
    "FEDBUS_SHARES": K8S / "base" / "client.yaml",  # the client's shell command: N of its share I/N
}
OTHER_VARIABLES = {"OMP_NUM_THREADS", "PYTHONUNBUFFERED"}

Object = dict[str, Any]


def unavailable(reason: str) -> None:
    if os.environ.get("FEDBUS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required (FEDBUS_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


def kustomize(target: str, *flags: str) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl is not installed (`kubectl kustomize` renders ops/k8s)")
    assert kubectl is not None
    return subprocess.run(
        [kubectl, "kustomize", *flags, str(K8S / target)], capture_output=True, text=True, timeout=120, check=False
    )


_RENDERED: dict[str, list[Object]] = {}


def render(overlay: str) -> list[Object]:
    """The objects of an overlay, rendered once per session."""
    if overlay not in _RENDERED:
        result = kustomize(f"overlays/{overlay}")
        assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
        _RENDERED[overlay] = [obj for obj in yaml.safe_load_all(result.stdout) if obj is not None]
    return _RENDERED[overlay]


def by_kind(objects: list[Object], kind: str) -> dict[str, Object]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def one(objects: list[Object], kind: str, name: str) -> Object:
    found = by_kind(objects, kind)
    assert name in found, f"no {kind} {name} (there are {sorted(found)})"
    return found[name]


def workloads(objects: list[Object]) -> Iterator[Object]:
    return (obj for obj in objects if obj["kind"] in WORKLOADS)


def pod_spec(workload: Object) -> Object:
    spec: Object = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Object, *, init: bool = True) -> list[Object]:
    spec = pod_spec(workload)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def fedbus_args(container: Object) -> list[str] | None:
    """The arguments after `fedbus` of a fedbus container (also through `sh -c '... exec fedbus ...'`)."""
    command = [*container.get("command", []), *container.get("args", [])]
    if command[:1] == ["fedbus"]:
        return command[1:]
    if command[:2] == ["sh", "-c"]:
        words = shlex.split(command[2].rpartition("exec ")[2])
        return words[1:] if words[:1] == ["fedbus"] else None
    return None


def role_of(args: list[str]) -> str:
    """The subcommand of `fedbus ARGS`, past the global --log-level."""
    words = list(args)
    while words and words[0].startswith("--"):
        words = words[2:]
    return words[0]


def env_names(container: Object, objects: list[Object]) -> set[str]:
    """The variables a container gets: its env, and the keys of the ConfigMaps and Secrets it takes whole."""
    names = {item["name"] for item in container.get("env", [])}
    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                found = by_kind(objects, kind).get(source[key]["name"])
                if found is not None:
                    names |= set(found.get("data", {})) | set(found.get("stringData", {}))
    return names


def env_value(container: Object, name: str) -> Any:
    for item in container.get("env", []):
        if item["name"] == name:
            return item.get("value", item.get("valueFrom"))
    raise AssertionError(f"{container['name']} has no {name}")


def referenced(objects: list[Object], kind: str) -> set[str]:
    """Names of the ConfigMaps or Secrets the pods and KEDA's TriggerAuthentications refer to."""
    key, volume_key, volume_name = (
        ("configMapRef", "configMap", "name") if kind == "ConfigMap" else ("secretRef", "secret", "secretName")
    )
    value_key = "configMapKeyRef" if kind == "ConfigMap" else "secretKeyRef"
    names: set[str] = set()
    for workload in workloads(objects):
        for container in containers(workload):
            names |= {s[key]["name"] for s in container.get("envFrom", []) if key in s}
            names |= {
                e["valueFrom"][value_key]["name"]
                for e in container.get("env", [])
                if value_key in e.get("valueFrom", {})
            }
        names |= {v[volume_key][volume_name] for v in pod_spec(workload).get("volumes", []) if volume_key in v}
    if kind == "Secret":
        for auth in by_kind(objects, "TriggerAuthentication").values():
            names |= {ref["name"] for ref in auth["spec"]["secretTargetRef"]}
    return names


def definitions() -> Object:
    data: Object = json.loads(DEFINITIONS.read_text())
    return data


def rabbitmq_password_matches(user: str, password: str) -> bool:
    """Whether `password` is the one definitions.json holds the hash of (rabbit_password_hashing_sha256:
    base64 of a 4-byte salt and sha256(salt + password))."""
    entry = next(u for u in definitions()["users"] if u["name"] == user)
    raw = base64.b64decode(entry["password_hash"])
    return hashlib.sha256(raw[:4] + password.encode()).digest() == raw[4:]


def secret_values(secret: Object) -> dict[str, str]:
    values = {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}
    return values | secret.get("stringData", {})
