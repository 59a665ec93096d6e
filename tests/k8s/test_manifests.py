"""The Kubernetes manifests (ops/k8s): every overlay renders with kustomize, every object is valid for the
Kubernetes 1.32 API, and what the objects say fits fedbus itself: the image and roles of the CLI, the
settings it reads, the RabbitMQ users and queue it knows, the Secrets docs/kubernetes.md lists.

kubectl renders (`kubectl kustomize`, no cluster needed); kubernetes-validate checks the schemas. Without
either the tests skip, unless FEDBUS_REQUIRE_SERVICES=1: then they fail.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from broker.topology import AGGREGATOR_QUEUE
from ops.settings import PREFIX, SECRETS, VARIABLES, Share
from tests.k8s.manifests import (
    BACKING_IMAGES,
    DEFINITIONS,
    DOCS,
    FEDBUS_UID,
    KEDA,
    KUBERNETES_VERSION,
    OTHER_FEDBUS_VARIABLES,
    OTHER_VARIABLES,
    OVERLAYS,
    PRODUCTION_SECRETS,
    ROLES,
    ROOT,
    by_kind,
    containers,
    definitions,
    env_names,
    env_value,
    fedbus_args,
    kustomize,
    one,
    pod_spec,
    rabbitmq_password_matches,
    referenced,
    render,
    role_of,
    secret_values,
    unavailable,
    workloads,
)

CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


# ---- 1. rendering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_into_named_objects_of_the_fedbus_namespace(overlay: str) -> None:
    objects = render(overlay)

    assert objects
    keys = [(obj["kind"], obj["metadata"]["name"]) for obj in objects]
    assert len(keys) == len(set(keys)), f"duplicates: {sorted(k for k in keys if keys.count(k) > 1)}"
    assert [name for kind, name in keys if kind == "Namespace"] == ["fedbus"]
    assert {obj["metadata"].get("namespace") for obj in objects if obj["kind"] != "Namespace"} == {"fedbus"}
    assert {"Deployment", "StatefulSet", "Job", "Service", "HorizontalPodAutoscaler", "ScaledObject"} <= {
        kind for kind, _ in keys
    }


def test_every_overlay_renders_as_kubectl_apply_k_reads_it() -> None:
    """No overlay reads a file outside a kustomization's folder (kustomize's default load restriction), and the
    in-cluster broker's ConfigMap comes from the one definitions file that compose.yaml mounts too."""
    for target in ("base", *(f"overlays/{name}" for name in OVERLAYS)):
        result = kustomize(target)
        assert result.returncode == 0, result.stderr

    generated = [
        c for c in render("dev") if c["kind"] == "ConfigMap" and c["metadata"]["name"].startswith("rabbitmq-config")
    ]
    assert len(generated) == 1
    assert json.loads(generated[0]["data"]["definitions.json"]) == json.loads(DEFINITIONS.read_text())


# ---- 2. schemas -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (pip install -e '.[dev]')")
    return kubernetes_validate


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_the_kubernetes_api(overlay: str, validator: Any) -> None:
    problems = []
    for obj in render(overlay):
        if obj["apiVersion"] == KEDA:
            continue  # KEDA's custom resources: checked below
        try:
            validator.validate(obj, KUBERNETES_VERSION, strict=True)
        except (validator.ValidationError, validator.InvalidSchemaError) as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc}")
    assert not problems, "\n".join(problems)


def test_the_schema_check_catches_a_misspelled_field_and_a_wrong_type(validator: Any) -> None:
    deployment = one(render("dev"), "Deployment", "coordinator")
    misspelled = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    wrong_type = {**deployment, "spec": {**deployment["spec"], "replicas": "one"}}

    for broken in (misspelled, wrong_type):
        with pytest.raises(validator.ValidationError):
            validator.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_the_aggregators_on_the_length_of_their_queue(overlay: str) -> None:
    objects = render(overlay)
    assert {obj["kind"] for obj in objects if obj["apiVersion"] == KEDA} == {"ScaledObject", "TriggerAuthentication"}
    scaled = one(objects, "ScaledObject", "aggregator")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == ("apps/v1", "Deployment")
    assert by_kind(objects, "Deployment")[target["name"]]["metadata"]["name"] == "aggregator"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]

    [trigger] = scaled["spec"]["triggers"]
    metadata = trigger["metadata"]
    assert trigger["type"] == "rabbitmq"
    assert metadata["mode"] == "QueueLength" and float(metadata["value"]) > 0
    assert metadata["queueName"] == AGGREGATOR_QUEUE
    assert metadata["vhostName"] in {vhost["name"] for vhost in definitions()["vhosts"]}
    assert metadata["protocol"] == "http"  # the management API: read by a monitoring user, no AMQP rights

    auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    [ref] = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host"
    secret = by_kind(objects, "Secret").get(ref["name"])
    if overlay == "production":
        assert secret is None and ref["name"] in PRODUCTION_SECRETS
        return
    assert secret is not None, f"no Secret {ref['name']}"
    host = urlsplit(secret_values(secret)[ref["key"]])
    assert host.scheme == "http" and host.port == 15672 and host.path == f"/{metadata['vhostName']}"
    assert host.username is not None and host.password is not None
    tags = {u["name"]: u["tags"] for u in definitions()["users"]}
    assert tags[host.username] in {"monitoring", "administrator"}
    assert rabbitmq_password_matches(host.username, host.password)
    # the Service the host names serves the management port
    service = one(objects, "Service", host.hostname.split(".")[0] if host.hostname else "")
    assert 15672 in {port["port"] for port in service["spec"]["ports"]}


# ---- 3. what the objects say ------------------------------------------------------------------------


def test_the_image_runs_as_the_uid_the_manifests_expect() -> None:
    assert f"--uid {FEDBUS_UID}" in (ROOT / "ops" / "Dockerfile").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fedbus_containers_share_one_image_and_run_a_command_of_the_cli(overlay: str) -> None:
    from services.cli.main import build_parser

    parser = build_parser()
    images = set()
    for workload in workloads(render(overlay)):
        name = workload["metadata"]["name"]
        for container in containers(workload):
            args = fedbus_args(container)
            if name in BACKING_IMAGES:
                assert args is None and container["image"] == BACKING_IMAGES[name]
                continue
            assert args is not None, f"{name}/{container['name']} does not run fedbus: {container.get('command')}"
            parser.parse_args(args)  # a role and flags `fedbus` knows (exits 2 otherwise)
            init = container in pod_spec(workload).get("initContainers", [])
            assert role_of(args) == ("db" if init else ROLES[name]), f"{name}/{container['name']}: {args}"
            if role_of(args) == "db":
                assert args[-2:] == ["db", "upgrade"]
            images.add(container["image"])
    assert len(images) == 1, images
    assert not images & set(BACKING_IMAGES.values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources_and_the_serving_ones_have_probes(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: no {bound}"
            ports = container.get("ports", [])
            if container not in pod_spec(workload)["containers"] or not ports:
                continue
            named = {p["name"] for p in ports if "name" in p} | {p["containerPort"] for p in ports}
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in container, f"{where} serves {sorted(map(str, named))} without a {probe}"
                check = container[probe]
                port = (check.get("tcpSocket") or check.get("httpGet") or {}).get("port")
                assert port is None or port in named, f"{where}: {probe} on {port}, not a port of the container"


def test_the_probes_are_those_of_each_role() -> None:
    objects = render("dev")
    [coordinator] = containers(one(objects, "Deployment", "coordinator"), init=False)
    [api] = containers(one(objects, "Deployment", "api"), init=False)

    assert [p["containerPort"] for p in coordinator["ports"]] == [50051]
    for probe in ("readinessProbe", "livenessProbe"):
        assert coordinator[probe]["tcpSocket"]["port"] == "grpc"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["command"][-4:] == ["--host", "0.0.0.0", "--port", "8080"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_unprivileged_and_fedbus_writes_only_to_its_volumes(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for container in containers(workload):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert set(mounts.values()) <= set(volumes) | claims, f"{name}: mounts of no volume"
            if name in BACKING_IMAGES:
                continue
            assert pod["runAsUser"] == FEDBUS_UID, name
            assert security["readOnlyRootFilesystem"] is True, f"{name}/{container['name']}"
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}/{container['name']}: /tmp is no emptyDir"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_client_pods_keep_their_identity_state_and_share(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    clients = one(objects, "StatefulSet", "client")
    [container] = containers(clients)
    state_dir = env_value(container, "FEDBUS_STATE_DIR")

    assert env_value(container, "FEDBUS_INSTANCE_NAME") == {"fieldRef": {"fieldPath": "metadata.name"}}
    [state] = [m for m in container["volumeMounts"] if m["mountPath"] == state_dir]
    assert state["name"] in {c["metadata"]["name"] for c in clients["spec"]["volumeClaimTemplates"]}
    assert clients["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    assert clients["spec"]["serviceName"] in by_kind(objects, "Service")

    # The command's share, with a stand-in `fedbus` that prints what it was given, for the last pod.
    shares = env_value(container, "FEDBUS_SHARES")
    replicas = clients["spec"]["replicas"]
    stub = tmp_path / "fedbus"
    stub.write_text('#!/bin/sh\necho "$FEDBUS_SHARE $*"\n')
    stub.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "FEDBUS_INSTANCE_NAME": f"client-{replicas - 1}",
        "FEDBUS_SHARES": shares,
    }
    result = subprocess.run(container["command"], env=env, capture_output=True, text=True, timeout=30, check=True)
    share, _, args = result.stdout.strip().partition(" ")
    assert Share.parse(share) == Share(replicas - 1, int(shares))  # every pod's ordinal is below N
    assert role_of(args.split()) == "client"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_the_pods_that_serve_their_ports(overlay: str) -> None:
    objects = render(overlay)
    pods = {w["metadata"]["name"]: w for w in workloads(objects)}
    for service in by_kind(objects, "Service").values():
        selector = service["spec"]["selector"]
        matching = [
            name
            for name, w in pods.items()
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items() and w["kind"] != "Job"
        ]
        assert len(matching) == 1, f"Service {service['metadata']['name']} selects {matching}"
        workload = pods[matching[0]]
        assert selector.items() <= workload["spec"]["selector"]["matchLabels"].items()
        ports = {p.get("name") for c in containers(workload, init=False) for p in c.get("ports", [])}
        for port in service["spec"].get("ports", []):
            assert port["targetPort"] in ports, f"Service {service['metadata']['name']}: {port}"
    for workload in pods.values():
        if workload["kind"] == "StatefulSet":
            assert workload["spec"]["serviceName"] in by_kind(objects, "Service")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fedbus_containers_get_only_variables_something_reads(overlay: str) -> None:
    known = {f"{PREFIX}{name}" for name in VARIABLES} | {f"{PREFIX}{name}_FILE" for name in SECRETS}
    for name, reader in OTHER_FEDBUS_VARIABLES.items():
        assert name in reader.read_text(), f"{name} is no longer read by {reader}"
    objects = render(overlay)
    for workload in workloads(objects):
        if workload["metadata"]["name"] in BACKING_IMAGES:
            continue
        for container in containers(workload):
            unknown = {
                name
                for name in env_names(container, objects)
                if name not in known | set(OTHER_FEDBUS_VARIABLES) | OTHER_VARIABLES and not name.startswith("OTEL_")
            }
            assert not unknown, f"{workload['metadata']['name']}/{container['name']}: {sorted(unknown)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_coordinator_and_a_migration_job_that_cleans_up(overlay: str) -> None:
    objects = render(overlay)
    coordinator = one(objects, "Deployment", "coordinator")
    job = one(objects, "Job", "migrate")

    assert coordinator["spec"]["replicas"] == 1 and coordinator["spec"]["strategy"]["type"] == "Recreate"
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["ttlSecondsAfterFinished"] > 0
    for name in ("coordinator", "aggregator", "api"):  # they wait for the schema
        init = pod_spec(one(objects, "Deployment", name)).get("initContainers", [])
        assert [fedbus_args(c) for c in init] == [["--log-level", "INFO", "db", "upgrade"]], name


@pytest.mark.parametrize("overlay", ("dev", "gpu"))
def test_dev_runs_everything_in_the_cluster_with_secrets_that_fit_the_broker(overlay: str) -> None:
    objects = render(overlay)
    assert set(BACKING_IMAGES) <= set(by_kind(objects, "StatefulSet"))
    assert set(referenced(objects, "Secret")) <= set(by_kind(objects, "Secret"))
    assert set(referenced(objects, "ConfigMap")) <= set(by_kind(objects, "ConfigMap"))

    # each role connects as its own RabbitMQ user, with the password definitions.json has the hash of
    users = {u["name"] for u in definitions()["users"]}
    for name in ("coordinator", "aggregator", "client", "api"):
        workload = one(objects, "StatefulSet" if name == "client" else "Deployment", name)
        [container] = containers(workload, init=False)
        [secret_name] = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
        url = urlsplit(secret_values(one(objects, "Secret", secret_name))["FEDBUS_AMQP_URL"])
        assert url.username == name and name in users and url.path == "/fedbus"
        assert url.password is not None and rabbitmq_password_matches(name, url.password)
    [config_volume] = [v for v in pod_spec(one(objects, "StatefulSet", "rabbitmq"))["volumes"] if "configMap" in v]
    rabbitmq_config = one(objects, "ConfigMap", config_volume["configMap"]["name"])
    assert json.loads(rabbitmq_config["data"]["definitions.json"]) == definitions()  # the file itself, no copy
    assert "load_definitions = /etc/rabbitmq/definitions.json" in rabbitmq_config["data"]["20-fedbus.conf"]


def test_dev_starts_a_run_its_clients_can_complete(tmp_path: Path) -> None:
    from services.cli.main import build_parser
    from services.cli.options import config_from

    objects = render("dev")
    [coordinator] = containers(one(objects, "Deployment", "coordinator"), init=False)
    path = Path(env_value(coordinator, "FEDBUS_RUN_CONFIG"))
    [mount] = [m for m in coordinator["volumeMounts"] if m["mountPath"] == str(path.parent)]
    [volume] = [v for v in pod_spec(one(objects, "Deployment", "coordinator"))["volumes"] if v["name"] == mount["name"]]
    run_file = tmp_path / path.name
    run_file.write_text(one(objects, "ConfigMap", volume["configMap"]["name"])["data"][path.name])

    config = config_from(build_parser().parse_args(["coordinator", "--config", str(run_file)]))

    clients = one(objects, "StatefulSet", "client")
    [client] = containers(clients)
    assert config.clients == clients["spec"]["replicas"] == int(env_value(client, "FEDBUS_SHARES"))


def test_production_has_no_broker_database_or_secret_of_its_own() -> None:
    objects = render("production")

    assert not set(BACKING_IMAGES) & (set(by_kind(objects, "StatefulSet")) | set(by_kind(objects, "Service")))
    assert not by_kind(objects, "Secret")
    assert not [obj for obj in objects if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("rabbitmq")]
    assert referenced(objects, "Secret") == set(PRODUCTION_SECRETS)
    for workload in workloads(objects):
        for container in containers(workload):
            for item in container.get("env", []):
                value = str(item.get("value", ""))
                assert not CREDENTIALS_IN_URL.search(value), f"{item['name']} holds credentials"
                assert not any(word in item["name"] for word in ("PASSWORD", "TOKEN", "SECRET")) or "value" not in item
    [image] = {c["image"] for w in workloads(objects) for c in containers(w)}
    assert "/" in image and ":" in image  # a registry's image, at a release


def test_production_serves_grpc_with_tls_from_a_mounted_secret() -> None:
    objects = render("production")
    for kind, name, variables in (
        ("Deployment", "coordinator", ("FEDBUS_TLS_CERT", "FEDBUS_TLS_KEY")),
        ("StatefulSet", "client", ("FEDBUS_TLS_CA",)),
    ):
        workload = one(objects, kind, name)
        [container] = containers(workload, init=False)
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        for variable in variables:
            path = Path(env_value(container, variable))
            [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == "fedbus-coordinator-tls"
            assert path.name in {item["path"] for item in secret["items"]}
        if name == "client":  # the CA only, never the coordinator's key
            assert [item["key"] for item in secret["items"]] == ["ca.crt"]


def test_docs_list_every_secret_production_needs_with_its_keys() -> None:
    text = DOCS.read_text()
    for name, keys in PRODUCTION_SECRETS.items():
        [line] = [line for line in text.splitlines() if line.startswith(f"| `{name}` |")]
        assert all(f"`{key}`" in line for key in keys), line


def test_gpu_puts_the_training_roles_on_gpu_nodes() -> None:
    objects = render("gpu")
    for kind, name in (("Deployment", "aggregator"), ("StatefulSet", "client")):
        workload = one(objects, kind, name)
        spec = pod_spec(workload)
        [container] = containers(workload, init=False)
        assert (
            container["resources"]["requests"]["nvidia.com/gpu"]
            == "1"
            == container["resources"]["limits"]["nvidia.com/gpu"]
        )
        assert env_value(container, "FEDBUS_DEVICE") == "cuda"
        assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    for name in ("coordinator", "api"):  # no torch there: no GPU
        for container in containers(one(objects, "Deployment", name)):
            assert "nvidia.com/gpu" not in container["resources"]["limits"]
    for overlay in ("dev", "production"):
        assert "nvidia.com/gpu" not in json.dumps(render(overlay))
