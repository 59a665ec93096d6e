"""Model serving: a run's model versions as bytes and manifests, from a small cache of content-addressed blobs."""

from __future__ import annotations

from contracts.ports import BlobStore
from contracts.tensor_codec import Manifest, decode_tensors, specs_of
from contracts.update_validation import l2_norm
from ops.metrics import FedbusMetrics
from services.coordinator import decide
from services.coordinator.blob_cache import BlobCache
from services.coordinator.commit import RunLedger
from services.coordinator.errors import NoRoundOpen, RunNotFound


class ModelServer:
    def __init__(self, blobs: BlobStore, runs: RunLedger, metrics: FedbusMetrics) -> None:
        self._runs = runs
        self._metrics = metrics
        self._blobs = BlobCache(blobs)
        self._manifests: dict[str, Manifest] = {}
        self._norms: dict[str, float] = {}

    async def model(self, run_id: str, version: int, round_: int = 0) -> tuple[Manifest, bytes]:
        """The manifest and bytes of one model version of a run (NotFound-like errors when there is none).

        With `round_`, NoRoundOpen unless that round of the run is open: a client does not train for it.
        """
        run = self._runs.state(run_id)
        digest = run.models.get(version)
        if digest is None or (round_ and not decide.work_wanted(run, round_, version)):
            # An aggregator may have just appended it, or the round opened or closed since the run was last read.
            run = await self._runs.refresh(run_id)
            digest = run.models.get(version)
            if round_ and not decide.work_wanted(run, round_, version):
                raise NoRoundOpen(f"round_closed: round {round_} of {run_id} is not open")
        if digest is None:
            raise RunNotFound(f"run {run_id!r} has no model version {version}")
        data = await self._blobs.get(digest)
        self._metrics.bytes_out.inc(len(data))
        return await self.manifest(digest), data

    async def manifest(self, digest: str) -> Manifest:
        """Tensor names, dtypes and shapes of a model: what every upload against it is checked with."""
        if digest not in self._manifests:
            await self._learn(digest)
        return self._manifests[digest]

    async def norm(self, digest: str) -> float:
        """The global L2 norm of a model's float tensors: what an update's norm is bounded relative to."""
        if digest not in self._norms:
            await self._learn(digest)
        return self._norms[digest]

    async def _learn(self, digest: str) -> None:
        data = await self._blobs.get(digest)
        tensors = decode_tensors(data)
        self._manifests[digest] = Manifest(tensors=specs_of(tensors), size=len(data), digest=digest)
        self._norms[digest] = l2_norm(tensors)
