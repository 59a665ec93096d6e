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

PREFIX = "FEDBUS_"

# name -> (default, description); `fedbus <role> --help` lists them.
VARIABLES: dict[str, tuple[str, str]] = {
    "AMQP_URL": ("amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL (vhost in the path)"),
    "DATABASE_URL": ("postgresql://root@127.0.0.1:5432/fedbus", "PostgreSQL URL of the event log"),
    "GRPC_ADDRESS": ("127.0.0.1:50051", "coordinator gRPC address clients connect to"),
    "GRPC_BIND": ("0.0.0.0:50051", "address the coordinator's gRPC server binds"),
    "ENROLLMENT_TOKEN": ("", "shared token clients present to register (or FEDBUS_ENROLLMENT_TOKEN_FILE)"),
    "TOKEN_SECRET": ("", "coordinator's secret that signs client tokens (or FEDBUS_TOKEN_SECRET_FILE)"),
    "PARTITIONS": ("10", "coordinator: number of data partitions handed out at registration"),
    "INSTANCE_NAME": ("", "client: a stable name to get the same identity back after a restart"),
    "DATA_DIR": ("", "dataset folder (default ~/.cache/fedbus/data)"),
    "WORKERS": ("1", "training/evaluation processes in this process"),
    "RUN_CONFIG": ("", "coordinator: a TOML run config to start once enough clients registered"),
    "WAIT_CLIENTS": ("0", "coordinator: clients to wait for before starting RUN_CONFIG (0: its clients)"),
    "RUN_ID": ("", "coordinator: the id of the run it starts (default: generated)"),
    "METRICS_PORT": ("0", "port of the Prometheus /metrics endpoint of this process (0: off)"),
}
SECRETS = ("ENROLLMENT_TOKEN", "TOKEN_SECRET")


def _value(env: Mapping[str, str], name: str) -> str:
    file_name = env.get(f"{PREFIX}{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{PREFIX}{name}_FILE", f"cannot read {file_name}: {exc.strerror}") from exc
    return env.get(f"{PREFIX}{name}", VARIABLES[name][0])


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
    partitions: int
    instance_name: str
    data_dir: str | None
    workers: int
    run_config: Path | None
    wait_clients: int
    run_id: str | None
    metrics_port: int

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
            partitions=_int(env, "PARTITIONS", 1),
            instance_name=_value(env, "INSTANCE_NAME") or f"{socket.gethostname()}-{os.getpid()}",
            data_dir=_value(env, "DATA_DIR") or None,
            workers=_int(env, "WORKERS", 1),
            run_config=Path(run_config) if run_config else None,
            wait_clients=_int(env, "WAIT_CLIENTS", 0),
            run_id=_value(env, "RUN_ID") or None,
            metrics_port=_int(env, "METRICS_PORT", 0),
        )

    def require(self, *names: str) -> None:
        """ConfigError naming the first variable a role needs but did not get."""
        for name in names:
            if not getattr(self, name.lower()):
                raise ConfigError(f"{PREFIX}{name}", "must be set (or the matching _FILE variable)")


def environment_help() -> str:
    lines = ["environment:"]
    for name, (default, text) in VARIABLES.items():
        shown = "(secret)" if name in SECRETS else (default or "-")
        lines.append(f"  {PREFIX}{name:<18} {text}; default {shown}")
    return "\n".join(lines)
