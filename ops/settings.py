"""Settings of the deployed runnables: frozen, built once from the environment, passed down.

Secrets come from the environment or from files (`<NAME>_FILE`), never from flags, and are never logged.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from contracts.errors import ConfigError
from ops.tls import ClientTls, ServerTls

PREFIX = "FEDBUS_"

# name -> (default, description); `fedbus <role> --help` lists them.
VARIABLES: dict[str, tuple[str, str]] = {
    "AMQP_URL": ("amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL (vhost in the path)"),
    "DATABASE_URL": ("postgresql://root@127.0.0.1:5432/fedbus", "PostgreSQL URL of the event log"),
    "GRPC_ADDRESS": ("127.0.0.1:50051", "coordinator gRPC address clients connect to"),
    "GRPC_BIND": ("0.0.0.0:50051", "address the coordinator's gRPC server binds"),
    "ENROLLMENT_TOKEN": ("", "shared token clients present to register (or FEDBUS_ENROLLMENT_TOKEN_FILE)"),
    "TOKEN_SECRET": ("", "coordinator's secret that signs client tokens (or FEDBUS_TOKEN_SECRET_FILE)"),
    "INSTANCE_NAME": ("", "client: a stable name to get the same identity back after a restart"),
    "DATA_DIR": (
        "",
        "built-in data sets for simulation and central evaluation (default ~/.cache/fedbus/data)",
    ),
    "CLIENT_DATA": (
        "",
        "client: its own data folder (train.npz or train/<class>/...; unset: a simulated SHARE)",
    ),
    "SHARE": (
        "",
        "client without CLIENT_DATA: its simulated share of the global data set, I/N (0 <= I < N), or any/N"
        " to claim a free one in SHARE_CLAIMS",
    ),
    "SHARE_CLAIMS": ("", "client: a folder its replicas share, where any/N claims a share (held while it runs)"),
    "TASK_PATH": ("", "folders tasks given as package.module:attribute are imported from (os.pathsep-separated)"),
    "WORKERS": ("1", "training/evaluation processes in this process"),
    "DEVICE": ("cpu", "client/aggregator: where those processes train and evaluate: cpu, cuda or cuda:N"),
    "RUN_CONFIG": ("", "coordinator: a TOML run config to start once enough clients registered"),
    "WAIT_CLIENTS": ("0", "coordinator: clients to wait for before starting RUN_CONFIG (0: its clients)"),
    "RUN_ID": ("", "coordinator: the id of the run it starts (default: generated)"),
    "TLS_CERT": ("", "coordinator: server certificate (PEM); with TLS_KEY turns TLS on and plaintext off"),
    "TLS_KEY": ("", "coordinator: server private key (PEM)"),
    "TLS_CLIENT_CA": ("", "coordinator: CA of client certificates; set = mTLS required"),
    "TLS_CA": ("", "client: CA that signed the coordinator's certificate; set = connect with TLS"),
    "TLS_CLIENT_CERT": ("", "client: its certificate for mTLS"),
    "TLS_CLIENT_KEY": ("", "client: its private key for mTLS"),
    "MAX_UPLOADS": ("64", "coordinator: uploads in flight before new ones are shed (RESOURCE_EXHAUSTED)"),
    "UPLOAD_IDLE_S": ("15", "coordinator: an upload stream that sends nothing for this long loses its slot"),
    "UPLOAD_MAX_S": ("600", "coordinator: the longest one upload stream may take"),
    "STATE_DIR": ("", "client: folder of its privacy ledgers, kept across restarts (default ~/.local/state/fedbus)"),
    "METRICS_PORT": ("0", "port of the Prometheus /metrics endpoint of this process (0: off)"),
}
SECRETS = ("ENROLLMENT_TOKEN", "TOKEN_SECRET")
TASK_PATH_ENV = f"{PREFIX}TASK_PATH"
MAX_SHARES = 100_000  # as many as a run may have clients


@dataclass(frozen=True, slots=True)
class Share:
    """A simulated client's share of the global data set: part `index` of `count` (None: claim a free one)."""

    index: int | None
    count: int

    @classmethod
    def parse(cls, text: str, name: str = "share") -> Share:
        """``I/N`` or ``any/N``; ConfigError naming `name` otherwise."""
        head, sep, tail = text.strip().partition("/")
        if not (sep and tail.isascii() and tail.isdigit() and (head == "any" or (head.isascii() and head.isdigit()))):
            raise ConfigError(name, f"{text!r:.60} is not I/N or any/N (for example 3/10)")
        count, index = int(tail), None if head == "any" else int(head)
        if not 1 <= count <= MAX_SHARES:
            raise ConfigError(name, f"N must be in [1, {MAX_SHARES}], got {count}")
        if index is not None and index >= count:
            raise ConfigError(name, f"I must be below N, got {index}/{count}")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{'any' if self.index is None else self.index}/{self.count}"


def add_task_path(folder: str | Path) -> None:
    """Let tasks spelled package.module:attribute be imported from `folder`, here and in the processes
    started from here (FEDBUS_TASK_PATH, which fedbus.load_task reads)."""
    folders = [f for f in os.environ.get(TASK_PATH_ENV, "").split(os.pathsep) if f]
    if str(folder) not in folders:
        os.environ[TASK_PATH_ENV] = os.pathsep.join([*folders, str(folder)])


def _value(env: Mapping[str, str], name: str) -> str:
    file_name = env.get(f"{PREFIX}{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{PREFIX}{name}_FILE", f"cannot read {file_name}: {exc.strerror}") from exc
    return env.get(f"{PREFIX}{name}", VARIABLES[name][0])


def _seconds(env: Mapping[str, str], name: str) -> float:
    text = _value(env, name)
    try:
        value = float(text)
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name}", f"must be a number of seconds, got {text!r}") from exc
    if not 0 < value <= 86_400:
        raise ConfigError(f"{PREFIX}{name}", f"must be in (0, 86400] seconds, got {text!r}")
    return value


def _int(env: Mapping[str, str], name: str, low: int) -> int:
    text = _value(env, name)
    try:
        value = int(text)
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name}", f"must be an integer >= {low}, got {text!r}") from exc
    if value < low:
        raise ConfigError(f"{PREFIX}{name}", f"must be an integer >= {low}, got {value}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    amqp_url: str
    database_url: str
    grpc_address: str
    grpc_bind: str
    enrollment_token: str = field(repr=False)
    token_secret: str = field(repr=False)
    instance_name: str
    data_dir: str | None
    client_data: Path | None
    share: Share | None
    share_claims: Path | None
    workers: int
    device: str
    run_config: Path | None
    wait_clients: int
    run_id: str | None
    metrics_port: int
    state_dir: Path
    max_uploads: int
    upload_idle_s: float
    upload_max_s: float
    server_tls: ServerTls | None
    client_tls: ClientTls | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        run_config = _value(env, "RUN_CONFIG")
        return cls(
            amqp_url=_value(env, "AMQP_URL"),
            database_url=_value(env, "DATABASE_URL"),
            grpc_address=_value(env, "GRPC_ADDRESS"),
            grpc_bind=_value(env, "GRPC_BIND"),
            enrollment_token=_value(env, "ENROLLMENT_TOKEN"),
            token_secret=_value(env, "TOKEN_SECRET"),
            instance_name=_value(env, "INSTANCE_NAME") or f"{socket.gethostname()}-{os.getpid()}",
            data_dir=_value(env, "DATA_DIR") or None,
            client_data=Path(_value(env, "CLIENT_DATA")).expanduser() if _value(env, "CLIENT_DATA") else None,
            share=Share.parse(_value(env, "SHARE"), f"{PREFIX}SHARE") if _value(env, "SHARE") else None,
            share_claims=Path(_value(env, "SHARE_CLAIMS")).expanduser() if _value(env, "SHARE_CLAIMS") else None,
            workers=_int(env, "WORKERS", 1),
            device=_value(env, "DEVICE"),
            run_config=Path(run_config) if run_config else None,
            wait_clients=_int(env, "WAIT_CLIENTS", 0),
            run_id=_value(env, "RUN_ID") or None,
            metrics_port=_int(env, "METRICS_PORT", 0),
            state_dir=Path(_value(env, "STATE_DIR") or Path.home() / ".local" / "state" / "fedbus"),
            max_uploads=_int(env, "MAX_UPLOADS", 1),
            upload_idle_s=_seconds(env, "UPLOAD_IDLE_S"),
            upload_max_s=_seconds(env, "UPLOAD_MAX_S"),
            server_tls=_server_tls(env),
            client_tls=_client_tls(env),
        )

    def require(self, *names: str) -> None:
        """ConfigError naming the first variable a role needs but did not get."""
        for name in names:
            if not getattr(self, name.lower()):
                raise ConfigError(f"{PREFIX}{name}", "must be set (or the matching _FILE variable)")


def _server_tls(env: Mapping[str, str]) -> ServerTls | None:
    cert, key, client_ca = (_value(env, n) for n in ("TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA"))
    if not cert and not key:
        if client_ca:
            raise ConfigError(f"{PREFIX}TLS_CLIENT_CA", "needs FEDBUS_TLS_CERT and FEDBUS_TLS_KEY (mTLS is TLS first)")
        return None
    if not (cert and key):
        raise ConfigError(f"{PREFIX}TLS_CERT", "FEDBUS_TLS_CERT and FEDBUS_TLS_KEY go together")
    return ServerTls(cert=cert, key=key, client_ca=client_ca or None)


def _client_tls(env: Mapping[str, str]) -> ClientTls | None:
    ca, cert, key = (_value(env, n) for n in ("TLS_CA", "TLS_CLIENT_CERT", "TLS_CLIENT_KEY"))
    if bool(cert) != bool(key):
        raise ConfigError(f"{PREFIX}TLS_CLIENT_CERT", "FEDBUS_TLS_CLIENT_CERT and FEDBUS_TLS_CLIENT_KEY go together")
    if not ca:
        if cert:
            raise ConfigError(f"{PREFIX}TLS_CA", "a client certificate needs FEDBUS_TLS_CA to check the server")
        return None
    return ClientTls(ca=ca, cert=cert or None, key=key or None)


def environment_help() -> str:
    lines = ["environment:"]
    for name, (default, text) in VARIABLES.items():
        shown = "(secret)" if name in SECRETS else (default or "-")
        lines.append(f"  {PREFIX}{name:<18} {text}; default {shown}")
    return "\n".join(lines)
