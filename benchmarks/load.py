"""N concurrent clients upload to one coordinator (real gRPC, SQLite log): latency of admitted uploads, sheds."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from contracts.compression import compress_update, parse_compression
from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.envelope import Envelope
from contracts.events import ModelInitialized, RoundStarted
from contracts.streams import run_stream
from contracts.tensor_codec import encode_with_manifest, sha256_hex
from contracts.uploads import ClientCapabilities, UploadHeader
from persistence.sql_event_log import SqlEventLog
from services.coordinator.coordinator import Coordinator
from services.coordinator.federation_servicer import UploadLimits
from services.coordinator.grpc_server import start_grpc_server
from services.coordinator.tokens import TokenAuthority
from workers.client.transport import FederationClient


async def _scenario(clients: int, max_uploads: int, folder: Path) -> tuple[list[float], float, float]:
    log = await SqlEventLog.connect(f"sqlite+aiosqlite:///{folder / 'load.db'}")
    coordinator = Coordinator(log)
    tokens = TokenAuthority.generate()
    server, port = await start_grpc_server(
        coordinator, tokens, "127.0.0.1:0", uploads=UploadLimits(max_concurrent=max_uploads)
    )
    transports = [FederationClient(f"127.0.0.1:{port}", attempts=50, deadline_s=120) for _ in range(clients)]
    try:
        regs = [
            await t.register(tokens.enrollment_token, ClientCapabilities(), f"load-{i}")
            for i, t in enumerate(transports)
        ]
        config = RunConfig(
            clients=clients, privacy=PrivacyConfig(enabled=False), round=RoundConfig(quorum=1.0, timeout_s=600)
        )
        run_id = await coordinator.create_run(config)
        model = {"conv.weight": np.zeros((32, 16, 4, 4), np.float32), "fc.weight": np.zeros((10, 512), np.float32)}
        data, manifest = encode_with_manifest(model)
        await log.put_blob(manifest.digest, "model", data)
        init = ModelInitialized(run_id=run_id, model_version=0, model_digest=manifest.digest, num_parameters=1)
        await log.append(run_stream(run_id), [Envelope(event=init)])
        await coordinator.advance(run_id)
        started = next(
            r.envelope.event
            for r in await log.read_stream(run_stream(run_id))
            if isinstance(r.envelope.event, RoundStarted)
        )
        rng = np.random.default_rng(0)

        async def upload(transport: FederationClient, client_id: str) -> float:
            delta = {k: rng.standard_normal(v.shape).astype(np.float32) * 0.01 for k, v in model.items()}
            payload = compress_update(delta, parse_compression("int8")).payload
            header = UploadHeader(
                run_id=run_id, round=started.round, client_id=client_id, base_model_version=0, num_samples=10,
                codec="int8", total_size=len(payload), sha256=sha256_hex(payload), raw_bytes=1,
            )  # fmt: skip
            begin = time.perf_counter()
            await transport.upload(header, payload)
            return time.perf_counter() - begin

        wall = time.perf_counter()
        latencies = await asyncio.gather(*(upload(t, r.client_id) for t, r in zip(transports, regs, strict=True)))
        wall = time.perf_counter() - wall
        shed = coordinator.metrics.registry.get_sample_value("fedbus_uploads_shed_total") or 0.0
        return sorted(latencies), wall, shed
    finally:
        for transport in transports:
            await transport.close()
        await server.stop(grace=None)
        await log.close()


def run(*, clients: int, max_uploads: int) -> list[str]:
    with tempfile.TemporaryDirectory() as folder:
        latencies, wall, shed = asyncio.run(_scenario(clients, max_uploads, Path(folder)))
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return [
        f"{clients} clients upload an int8 update (~8 KB) at once to one coordinator (real gRPC on loopback, "
        f"SQLite log), at most {max_uploads} uploads in flight; the rest are shed with RESOURCE_EXHAUSTED and retried "
        "by the clients "
        "with jittered backoff. Latency is what a client sees, retries included.",
        "",
        "| clients | admitted | shed (then retried) | p50 | p99 | max | wall | updates/s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {clients} | {len(latencies)} | {shed:.0f} | {p50 * 1e3:.0f} ms | {p99 * 1e3:.0f} ms | "
        f"{latencies[-1] * 1e3:.0f} ms | {wall:.2f} s | {len(latencies) / wall:.0f} |",
    ]
