"""The server step of each strategy: (global model, the round's combined update, the state kept so far) ->
(next global model, the new state). Pure numpy; the aggregator stores the state as a blob after each round.

With Δ the combined client update (the weighted mean of ``trained - base``), η the server learning rate and
t the round's step count (Reddi et al. 2021, Algorithm 2; Hsu et al. 2019 for server momentum):

    fedavg, fedprox   x ← x + Δ
    fedbuff           x ← x + η Δ, Δ = Σ n_i s(τ_i) Δ_i / Σ n_i over the buffer (Nguyen et al. 2022, Alg. 1)
    fedavgm           m ← β m + Δ;                                   x ← x + η m
    fedadagrad        m ← β1 m + (1 - β1) Δ;  v ← v + Δ²;            x ← x + η m̂ / (√v + τ)
    fedadam           m ← β1 m + (1 - β1) Δ;  v ← β2 v + (1 - β2) Δ²; x ← x + η m̂ / (√v̂ + τ)
    fedyogi           m as Adam;  v ← v - (1 - β2) Δ² sign(v - Δ²);  x ← x + η m̂ / (√v̂ + τ)

m and v start at 0. With bias_correction (the default) m̂ = m / (1 - β1^t) and v̂ = v / (1 - β2^t), as in
Adam (Kingma & Ba 2015), so the first rounds are not damped towards 0; without it m̂ = m and v̂ = v, the
paper's Algorithm 2 as written. Adagrad's v is a sum and is never corrected. Tensors that are not floating
point (counters, buffers) are copied from the model unchanged. FedBuff's staleness weight s(τ) scales each
update before it is combined (the aggregator does it, with `StrategyConfig.staleness_weight`), so with equal
sample counts Δ is the paper's (1/K) Σ s(τ_i) Δ_i.
"""

from __future__ import annotations

import numpy as np

from contracts.strategy import FEDADAGRAD, FEDADAM, FEDAVG, FEDAVGM, FEDBUFF, FEDPROX, FEDYOGI, StrategyConfig
from contracts.tensors import TensorDict, TensorMapping
from workers.learning.fedavg import apply_update

STEP = "step"  # the state's round counter t, as a float32 array of one element
STRATEGY_NAMES = (FEDAVG, FEDAVGM, FEDADAGRAD, FEDADAM, FEDYOGI, FEDPROX, FEDBUFF)  # a test pins it to the catalog


def server_step(
    strategy: StrategyConfig, base: TensorMapping, update: TensorMapping, state: TensorMapping
) -> tuple[TensorDict, TensorDict]:
    """The next global model and the strategy's new state (empty for the stateless ones)."""
    name = strategy.name
    if name in (FEDAVG, FEDPROX):
        return apply_update(base, update), {}
    floats = sorted(k for k in base if np.asarray(base[k]).dtype.kind == "f")
    if name == FEDBUFF:
        return apply_update(base, update, server_lr=float(strategy.option("server_lr"))), {}
    deltas = {k: np.asarray(update[k], dtype=np.float64) for k in floats}
    if name == FEDAVGM:
        beta, lr = float(strategy.option("momentum")), float(strategy.option("server_lr"))
        momentum = {k: beta * _slot(state, "m", k, deltas[k]) + deltas[k] for k in floats}
        return _moved(base, {k: lr * momentum[k] for k in floats}), {f"m.{k}": _f32(v) for k, v in momentum.items()}
    return _adaptive(strategy, base, deltas, state, floats)


def _adaptive(
    strategy: StrategyConfig,
    base: TensorMapping,
    deltas: dict[str, np.ndarray],
    state: TensorMapping,
    floats: list[str],
) -> tuple[TensorDict, TensorDict]:
    name = strategy.name
    lr, beta1, tau = (float(strategy.option(key)) for key in ("server_lr", "beta1", "tau"))
    beta2 = 0.0 if name == FEDADAGRAD else float(strategy.option("beta2"))
    corrected = bool(strategy.option("bias_correction"))
    t = int(np.asarray(state[STEP]).reshape(-1)[0]) + 1 if STEP in state else 1
    steps: dict[str, np.ndarray] = {}
    kept: TensorDict = {STEP: np.array([t], dtype=np.float32)}
    for k in floats:
        delta = deltas[k]
        m = beta1 * _slot(state, "m", k, delta) + (1 - beta1) * delta
        v_old, square = _slot(state, "v", k, delta), delta * delta
        if name == FEDADAGRAD:
            v = v_old + square
        elif name == FEDADAM:
            v = beta2 * v_old + (1 - beta2) * square
        else:
            assert name == FEDYOGI
            v = v_old - (1 - beta2) * square * np.sign(v_old - square)
        m_hat = m / (1 - beta1**t) if corrected else m
        v_hat = v / (1 - beta2**t) if corrected and name != FEDADAGRAD else v
        steps[k] = lr * m_hat / (np.sqrt(v_hat) + tau)
        kept[f"m.{k}"], kept[f"v.{k}"] = _f32(m), _f32(v)
    return _moved(base, steps), kept


def _slot(state: TensorMapping, prefix: str, key: str, like: np.ndarray) -> np.ndarray:
    found = state.get(f"{prefix}.{key}")
    if found is None:
        return np.zeros_like(like)
    value = np.asarray(found, dtype=np.float64)
    if value.shape != like.shape:
        raise ValueError(f"strategy state {prefix}.{key} has shape {value.shape}, the model {like.shape}")
    return value


def _moved(base: TensorMapping, steps: dict[str, np.ndarray]) -> TensorDict:
    return apply_update(base, {k: _f32(v) for k, v in steps.items()})


def _f32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)
