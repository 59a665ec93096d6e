"""Model serving: a run's model versions as bytes and manifests, from a small cache of content-addressed blobs."""

from __future__ import annotations

from contracts.ports import BlobStore
from contracts.tensor_codec import Manifest, decode_tensors, specs_of
from ops.metrics import FedbusMetrics
from services.coordinator.blob_cache import BlobCache
from services.coordinator.commit import RunLedger
from services.coordinator.errors import RunNotFound


class ModelServer:
    def __init__(self, blobs: BlobStore, runs: RunLedger, metrics: FedbusMetrics) -> None:
        self._runs = runs
        self._metrics = metrics
        self._blobs = BlobCache(blobs)
        self._manifests: dict[str, Manifest] = {}

    async def model(self, run_id: str, version: int) -> tuple[Manifest, bytes]:
        """The manifest and bytes of one model version of a run (NotFound-like errors when there is none)."""
        digest = self._runs.state(run_id).models.get(version)
        if digest is None:  # an aggregator may have just appended it
            digest = (await self._runs.refresh(run_id)).models.get(version)
        if digest is None:
            raise RunNotFound(f"run {run_id!r} has no model version {version}")
        data = await self._blobs.get(digest)
        self._metrics.bytes_out.inc(len(data))
        return await self.manifest(digest), data

    async def manifest(self, digest: str) -> Manifest:
        """Tensor names, dtypes and shapes of a model: what every upload against it is checked with."""
        if digest not in self._manifests:
            data = await self._blobs.get(digest)
            tensors = decode_tensors(data)
            self._manifests[digest] = Manifest(tensors=specs_of(tensors), size=len(data), digest=digest)
        return self._manifests[digest]
