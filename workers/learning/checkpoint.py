"""Model checkpoints on disk: one .npz of named float arrays plus a JSON metadata entry, never pickle."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from contracts.errors import CodecError, ConfigError
from contracts.tensors import TensorDict, TensorMapping

META_KEY = "__meta__"


def save_checkpoint(path: str | Path, weights: TensorMapping, meta: dict[str, Any]) -> None:
    """Write `weights` and JSON-serializable `meta` to `path` atomically (temp file, then rename)."""
    if META_KEY in weights:
        raise ConfigError("weights", f"{META_KEY!r} is reserved for the checkpoint's metadata")
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    bad = sorted(k for k, v in arrays.items() if v.dtype.hasobject)
    if bad:
        raise ConfigError("weights", f"object arrays cannot be stored without pickle: {bad}")
    arrays[META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    target = Path(path)
    partial = target.with_name(target.name + ".part")
    # The .npz layout written by hand (np.savez's keyword arguments would clash with keys like "file").
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, array, allow_pickle=False)
    os.replace(partial, target)


def load_checkpoint(path: str | Path) -> tuple[TensorDict, dict[str, Any]]:
    """Read a checkpoint written by save_checkpoint; CodecError when the file is not one."""
    try:
        with np.load(Path(path), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CodecError(f"{path}: not a checkpoint: {exc}") from exc
    raw = arrays.pop(META_KEY, None)
    if raw is None or raw.dtype != np.uint8:
        raise CodecError(f"{path}: checkpoint has no {META_KEY} entry")
    try:
        meta = json.load(io.BytesIO(raw.tobytes()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"{path}: bad checkpoint metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise CodecError(f"{path}: checkpoint metadata is not an object")
    return arrays, meta
