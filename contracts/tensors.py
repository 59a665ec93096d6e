"""The in-memory form of model weights and updates: named numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.generic]
TensorDict = dict[str, Array]
TensorMapping = Mapping[str, Array]
