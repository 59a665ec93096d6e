"""The rendered dev overlay run for real with `podman kube play`: three client pods finish the overlay's
two-round DP run, each on the share its pod name gives it, and a re-created client pod gets its identity
back from its volume.

podman (4.3) plays Pods, not what a cluster adds around them, so this test converts the rendered objects
into the Pods the cluster would make, changing only what podman lacks:
- each Deployment and Job becomes one Pod, each StatefulSet its pods `<name>-0`, `<name>-1`, ... in order;
- Services become hostAliases: a Service's name resolves to the IP of the pod it selects (pods are
  played in dependency order, so the IPs are known: the broker and the database, the migration Job, the
  coordinator, then the rest); containerPorts go (podman would publish them on the host's ports);
- probes go (podman runs none here): the test runs the readiness commands itself and waits;
- init containers get podman's type "always" (they run at each pod start, as in Kubernetes): podman 4.3
  removes one of the default type "once" while it may still run, and the play fails;
- envFrom ConfigMaps and Secrets, `secretKeyRef` and the downward API's `metadata.name` become plain values;
- ConfigMap volumes become host folders holding their keys, a `subPath` mount a mount of that one file,
  each volumeClaimTemplate a host folder per pod (kept when the pod is re-created, as its claim would be),
  and the empty `data` volume the host's data sets (no downloads here);
- the images are the stand-ins of podman-stack and the fedbus image built from the working tree; the
  stand-ins run as the users of Debian's packages, so the backing pods' runAsUser goes (the fedbus pods
  keep theirs, read-only root filesystems and dropped capabilities included).

Marker `compose`: never part of `make test`; as root, `pytest -m compose tests/k8s` (minutes; the image build
reuses podman's layer cache). Skipped without podman, unless FEDBUS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.manifests import (
    BACKING_IMAGES,
    ROOT,
    Object,
    by_kind,
    containers,
    one,
    pod_spec,
    render,
    unavailable,
)

pytestmark = [pytest.mark.compose, pytest.mark.timeout(3600)]

PODMAN_STACK = Path(os.environ.get("PODMAN_STACK", ROOT.parent / "shared" / "tools" / "podman-stack" / "podman-stack"))
DATA_DIR = Path(os.environ.get("FEDBUS_DATA_DIR") or ROOT.parent / "shared" / "datasets")
IMAGE = "localhost/fedbus:k8s-test"
STAND_INS = {image: f"localhost/{image}" for image in BACKING_IMAGES.values()}
BUILD_TIMEOUT_S = 1800.0
READY_DEADLINE_S = 300.0
RUN_DEADLINE_S = 900.0
CRASH_LOOP_RESTARTS = 3
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")


def _podman(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


@dataclass(kw_only=True)
class Cluster:
    """The converted dev overlay: Pods played by podman, named `<prefix>-<pod>`, with host folders under `work`."""

    objects: list[Object]
    prefix: str
    work: Path
    pods: dict[str, str] = field(default_factory=dict)  # pod -> IP, of those played so far
    failure: str | None = None

    def name(self, pod: str) -> str:
        return f"{self.prefix}-{pod}"

    def container(self, pod: str, container: str) -> str:
        return f"{self.name(pod)}-{container}"  # how podman names a played pod's containers

    # ---- conversion ---------------------------------------------------------------------------------

    def pods_of(self, kind: str, workload_name: str) -> list[tuple[str, Object]]:
        workload = one(self.objects, kind, workload_name)
        if kind == "StatefulSet":
            names = [f"{workload_name}-{i}" for i in range(workload["spec"]["replicas"])]
        else:
            names = [workload_name] if workload["spec"].get("replicas", 1) == 1 else []
            names = names or [f"{workload_name}-{i}" for i in range(workload["spec"]["replicas"])]
        return [(pod, self.pod(workload, pod)) for pod in names]

    def pod(self, workload: Object, pod: str) -> Object:
        spec = copy.deepcopy(pod_spec(workload))
        name = self.name(pod)
        backing = workload["metadata"]["name"] in BACKING_IMAGES
        if workload["kind"] != "Job":
            spec["restartPolicy"] = "Always"
        if backing:  # the stand-ins' users are Debian's, not the official images' 999
            for key in ("runAsUser", "runAsGroup", "fsGroup"):
                spec["securityContext"].pop(key, None)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        converted: dict[str, Object] = {}
        for claim in workload["spec"].get("volumeClaimTemplates", []):
            folder = self.folder("claims", f"{claim['metadata']['name']}-{name}", mode=0o777)
            converted[claim["metadata"]["name"]] = _host_path(folder, "Directory")
        for volume_name, volume in volumes.items():
            if "configMap" in volume:
                converted[volume_name] = _host_path(self.config_map(volume["configMap"]["name"]), "Directory")
            elif volume_name == "data" and "emptyDir" in volume:
                converted[volume_name] = _host_path(DATA_DIR, "Directory")
            else:
                converted[volume_name] = {k: v for k, v in volume.items() if k != "name"}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            container["image"] = STAND_INS.get(container["image"], IMAGE)
            container["env"] = self.env(container, name)
            container.pop("envFrom", None)
            for probe in PROBES:
                container.pop(probe, None)
            container.pop("ports", None)  # podman would publish them on the host; pods reach each other's IPs
            for mount in container.get("volumeMounts", []):
                sub_path = mount.pop("subPath", None)
                if sub_path is not None:  # podman mounts the folder for a subPath: mount the file itself
                    file_volume = f"{mount['name']}-{len(converted)}"
                    source = Path(converted[mount["name"]]["hostPath"]["path"]) / sub_path
                    converted[file_volume] = _host_path(source, "File")
                    mount["name"] = file_volume
        spec["volumes"] = [{"name": n, **v} for n, v in converted.items()]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        annotations = {"io.podman.annotations.init.container.type": "always"}
        metadata = {"name": name, "labels": labels, "annotations": annotations}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}

    def env(self, container: Object, pod_name: str) -> list[Object]:
        values: dict[str, str] = {}
        for source in container.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    values |= self.data(kind, source[key]["name"])
        for item in container.get("env", []):
            value_from = item.get("valueFrom", {})
            if "fieldRef" in value_from:
                assert value_from["fieldRef"]["fieldPath"] == "metadata.name", item
                values[item["name"]] = pod_name
            elif "secretKeyRef" in value_from:
                ref = value_from["secretKeyRef"]
                values[item["name"]] = self.data("Secret", ref["name"])[ref["key"]]
            else:
                values[item["name"]] = item["value"]
        return [{"name": n, "value": v} for n, v in values.items()]

    def data(self, kind: str, name: str) -> dict[str, str]:
        obj = one(self.objects, kind, name)
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
        return dict(obj.get("data", {}))

    def config_map(self, name: str) -> Path:
        folder = self.folder("configmaps", name, mode=0o755)
        for key, value in self.data("ConfigMap", name).items():
            (folder / key).write_text(value)
            (folder / key).chmod(0o644)
        return folder

    def folder(self, *parts: str, mode: int) -> Path:
        folder = self.work.joinpath(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(mode)
        return folder

    # ---- playing ------------------------------------------------------------------------------------

    def aliases(self) -> list[Object]:
        """Each Service's name -> the IP of the (first) played pod it selects."""
        aliases = []
        for service_name, service in by_kind(self.objects, "Service").items():
            selector = service["spec"]["selector"].items()
            for pod, ip in self.pods.items():
                if not ip:
                    continue
                workload = self._workload_of(pod)
                if workload is not None and selector <= workload["spec"]["template"]["metadata"]["labels"].items():
                    aliases.append({"ip": ip, "hostnames": [service_name]})
                    break
        return aliases

    def _workload_of(self, pod: str) -> Object | None:
        for kind in ("Deployment", "StatefulSet", "Job"):
            for name, workload in by_kind(self.objects, kind).items():
                if pod == name or re.fullmatch(rf"{re.escape(name)}-\d+", pod):
                    return workload
        return None

    def play(self, pod: str, manifest: Object) -> None:
        manifest = copy.deepcopy(manifest)
        manifest["spec"]["hostAliases"] = self.aliases()
        path = self.work / f"{pod}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        result = _podman("kube", "play", str(path), timeout=300, check=False)
        if result.returncode != 0:
            self.pods[pod] = ""  # removed at the end
            pytest.fail(f"podman kube play {pod} failed:\n{result.stdout}\n{result.stderr}\n{self.logs()}")
        self.pods[pod] = ""
        infra = _podman("pod", "inspect", self.name(pod), "--format", "{{.InfraContainerID}}").stdout.strip()
        network = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"  # kube play's own network
        ips = _podman("inspect", infra, "--format", network).stdout.split()
        assert ips, f"pod {pod} has no IP"
        self.pods[pod] = ips[0]

    def remove(self, pod: str) -> None:
        _podman("pod", "rm", "-f", "-t", "20", self.name(pod), timeout=120, check=False)
        self.pods.pop(pod, None)

    def exec(self, pod: str, container: str, *command: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return _podman("exec", self.container(pod, container), *command, timeout=timeout, check=False)

    def wait_ready(self, pod: str, container: str, probe: list[str]) -> None:
        """Until the container's own readiness command succeeds (what the kubelet would run)."""
        started = time.monotonic()
        while time.monotonic() - started < READY_DEADLINE_S:
            if self.exec(pod, container, *probe).returncode == 0:
                return
            time.sleep(2)
        pytest.fail(f"{pod} not ready within {READY_DEADLINE_S:.0f}s:\n{self.logs()}")

    def wait_exit(self, pod: str, container: str) -> int:
        started = time.monotonic()
        while time.monotonic() - started < READY_DEADLINE_S:
            state = _podman(
                "inspect", self.container(pod, container), "--format", "{{.State.Status}} {{.State.ExitCode}}"
            )
            status, code = state.stdout.split()
            if status == "exited" and (code == "0" or self.restarts().get(self.container(pod, container), 0) >= 3):
                return int(code)
            time.sleep(2)
        pytest.fail(f"{pod}/{container} did not end within {READY_DEADLINE_S:.0f}s:\n{self.logs()}")

    def sql(self, query: str) -> list[str]:
        result = self.exec(
            "postgres-0", "postgres", "psql", "-h", "/tmp", "-U", "fedbus", "-d", "fedbus", "-tAc", query
        )
        return [line for line in result.stdout.splitlines() if line.strip()]

    def log(self, pod: str, container: str) -> str:
        result = _podman("logs", self.container(pod, container), check=False)
        return result.stdout + result.stderr

    def restarts(self) -> dict[str, int]:
        listed = _podman("ps", "-a", "--filter", f"pod={self.prefix}-", "--format", "{{.Names}}", check=False)
        names = [n for n in listed.stdout.split() if n.startswith(f"{self.prefix}-") and not n.endswith("-infra")]
        if not names:
            return {}
        result = _podman("inspect", "--format", "{{.Name}} {{.RestartCount}}", *names, check=False)
        counts = {}
        for line in result.stdout.splitlines():
            name, _, count = line.rpartition(" ")
            if count.isdigit():
                counts[name] = int(count)
        return counts

    def logs(self, tail: int = 30) -> str:
        listed = _podman("ps", "-a", "--filter", f"pod={self.prefix}-", "--format", "{{.Names}}", check=False)
        out = []
        for name in listed.stdout.split():
            if name.startswith(f"{self.prefix}-") and not name.endswith("-infra"):
                logs = _podman("logs", "--tail", str(tail), name, check=False)
                out.append(f"--- {name}\n{logs.stdout}{logs.stderr}")
        return "\n".join(out)


def _host_path(path: Path, kind: str) -> Object:
    return {"hostPath": {"path": str(path), "type": kind}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("podman") is None:
        unavailable("podman is not installed (run ops/compose/prepare-host.sh as root)")
    if os.geteuid() != 0:
        unavailable("podman kube play runs as root here")
    if not PODMAN_STACK.is_file():
        unavailable(f"podman-stack not found at {PODMAN_STACK}")
    if not (DATA_DIR / "MNIST" / "raw").is_dir():
        unavailable(f"MNIST not found under {DATA_DIR}")
    # podman-stack's settings (ulimits these machines allow, runc) and its stand-in images
    os.environ.setdefault("CONTAINERS_CONF", str(PODMAN_STACK.parent / "containers.conf"))
    subprocess.run([str(ROOT / "ops" / "compose" / "prepare-host.sh")], check=True, timeout=900)
    build = subprocess.run(
        ["podman", "build", "-q", "-f", "ops/Dockerfile", "-t", IMAGE, "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert build.returncode == 0, f"podman build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"

    work = tmp_path_factory.mktemp("kube-play")
    work.chmod(0o755)
    cluster = Cluster(objects=render("dev"), prefix=f"fk{uuid.uuid4().hex[:6]}", work=work)
    try:
        yield cluster
    finally:
        for pod in list(cluster.pods):
            cluster.remove(pod)


def _completed_run(cluster: Cluster) -> dict[str, Any]:
    if cluster.failure is not None:
        pytest.fail(cluster.failure)
    started = time.monotonic()
    while time.monotonic() - started < RUN_DEADLINE_S:
        rows = cluster.sql("SELECT payload FROM events WHERE type = 'RunCompleted'")
        if rows:
            payload: dict[str, Any] = json.loads(rows[0])
            return payload
        looping = {name: n for name, n in cluster.restarts().items() if n >= CRASH_LOOP_RESTARTS}
        if looping:
            cluster.failure = f"containers in a crash loop (restarts: {looping}):\n{cluster.logs()}"
            pytest.fail(cluster.failure)
        time.sleep(5)
    cluster.failure = f"the run did not complete within {RUN_DEADLINE_S:.0f}s:\n{cluster.logs()}"
    pytest.fail(cluster.failure)


def _registered_as(log: str) -> list[tuple[str, str]]:
    return re.findall(r"registered as (\S+) \(simulated share (\d+/\d+)\)", log)


def test_the_dev_overlay_completes_its_run_with_one_share_per_client_pod(cluster: Cluster) -> None:
    objects = cluster.objects
    for name in ("postgres", "rabbitmq"):
        [(pod, manifest)] = cluster.pods_of("StatefulSet", name)
        cluster.play(pod, manifest)
    for name in ("postgres", "rabbitmq"):
        [container] = containers(one(objects, "StatefulSet", name))
        cluster.wait_ready(f"{name}-0", name, container["readinessProbe"]["exec"]["command"])

    [(job, manifest)] = cluster.pods_of("Job", "migrate")
    cluster.play(job, manifest)
    assert cluster.wait_exit(job, "migrate") == 0, cluster.log(job, "migrate")

    for name in ("coordinator", "aggregator", "api"):
        for pod, manifest in cluster.pods_of("Deployment", name):
            cluster.play(pod, manifest)
    clients = cluster.pods_of("StatefulSet", "client")
    for pod, manifest in clients:
        cluster.play(pod, manifest)

    completed = _completed_run(cluster)

    assert completed["rounds"] == 2
    registered = {
        json.loads(row)["client_id"]
        for row in cluster.sql("SELECT payload FROM events WHERE type = 'ClientRegistered'")
    }
    assert len(registered) == len(clients) == 3
    for i, (pod, _) in enumerate(clients):  # client-i trains on share i/3, from its pod name
        [(client_id, share)] = _registered_as(cluster.log(pod, "client"))
        assert share == f"{i}/3" and client_id in registered
    # the API answers its probes' paths, the coordinator its probe's port
    for path in ("/healthz", "/readyz"):
        check = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080{path}', timeout=10)"
        assert cluster.exec("api", "api", "python", "-c", check).returncode == 0, path
    check = "import socket; socket.create_connection(('127.0.0.1', 50051), 5).close()"
    assert cluster.exec("coordinator", "coordinator", "python", "-c", check).returncode == 0


def test_a_recreated_client_pod_gets_its_identity_back_from_its_volume(cluster: Cluster) -> None:
    _completed_run(cluster)
    [(before, share)] = _registered_as(cluster.log("client-0", "client"))
    [(pod, manifest)] = cluster.pods_of("StatefulSet", "client")[:1]

    cluster.remove(pod)  # a new container, the same name and the same claim, as a rescheduled pod
    cluster.play(pod, manifest)

    started = time.monotonic()
    while not (again := _registered_as(cluster.log(pod, "client"))) and time.monotonic() - started < READY_DEADLINE_S:
        time.sleep(2)
    assert again == [(before, share)], cluster.log(pod, "client")[-3000:]
