"""Local training of one client's task (DP-SGD with Opacus, or plain SGD) and central evaluation.

`prepare`, `train_local`, `evaluate` and `initial_weights` are top-level functions with picklable arguments
(a task reference, a DataRequest), so they run unchanged in a ProcessPoolExecutor worker (use `init_worker`
as its initializer); each process loads a task and a client's data once. Weights go in and out as numpy.
"""

from __future__ import annotations

import re
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, Subset

from contracts.errors import ConfigError
from contracts.evaluation import EVAL_PREFIX, EVAL_SAMPLES
from contracts.tensors import TensorDict, TensorMapping
from fedbus.data import DataRequest, LocalData, Samples
from fedbus.errors import DataUnavailable, TaskError
from fedbus.loading import load_task
from fedbus.task import Task, check_private, supervised_step
from workers.learning.local_round import LocalTrainConfig, LocalTrainResult
from workers.learning.models import load_numpy, to_numpy
from workers.learning.privacy import PrivacyLedger

_process_device = "cpu"  # what `init_worker` chose for this process; a config's own `device` overrides it


def check_device(device: str) -> str:
    """`device` if torch can train on it here: "cpu", or "cuda" / "cuda:N" with a GPU torch can see."""
    if device == "cpu":
        return device
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError("device", f"must be cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError("device", f"{device} asked for, but torch sees no CUDA GPU on this machine")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError("device", f"{device} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


def init_worker(device: str = "cpu") -> None:
    """Process-pool initializer: one torch thread per process (N workers use N cores, not N squared), and the
    device this process trains and evaluates on."""
    global _process_device
    torch.set_num_threads(1)
    _process_device = check_device(device)


def _check_config(config: LocalTrainConfig) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise ConfigError(name, f"must be at least 1, got {getattr(config, name)}")
    if config.max_steps is not None and config.max_steps < 1:
        raise ConfigError("max_steps", f"must be at least 1 or unset, got {config.max_steps}")
    if config.dp and (config.noise_multiplier is None or config.noise_multiplier <= 0):
        raise ConfigError("noise_multiplier", "DP training needs a positive noise multiplier (plan_privacy)")
    if config.dp and config.max_grad_norm <= 0:
        raise ConfigError("max_grad_norm", f"must be positive, got {config.max_grad_norm}")
    if config.proximal_mu < 0:
        raise ConfigError("proximal_mu", f"must be 0 or more, got {config.proximal_mu}")


@lru_cache(maxsize=4)
def local_data(task: str, request: DataRequest) -> LocalData:
    """The client's data for `request`, read once per process."""
    return load_task(task).load(request)


def prepare(task: str, request: DataRequest, *, private: bool) -> int:
    """Load `task` and the client's data and check that the model trains on them (under DP: that Opacus
    can); the number of training samples. TaskError or DataUnavailable, in one line, when not."""
    loaded = load_task(task)
    data = local_data(task, request)
    model = loaded.build_model(seed=0)
    if private:
        check_private(loaded, model)
    for split, dataset in (("training", data.train), ("test", data.test)):
        if dataset is not None:
            _check_fits(loaded, model, split, dataset)
    return len(data.train)  # type: ignore[arg-type]


def _check_fits(task: Task, model: nn.Module, split: str, dataset: Samples) -> None:
    if len(dataset) == 0:  # type: ignore[arg-type]  # an empty test split is scored as no test data
        return
    sample, label = dataset[0]
    try:
        with torch.no_grad():
            model.eval()
            outputs = model(sample.unsqueeze(0))
            task.loss(outputs, torch.as_tensor(label).reshape(1))
    except Exception as exc:  # a shape or type mismatch between the user's data and model
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataUnavailable(
            f"task {task.name}: {split} samples of shape {tuple(sample.shape)} do not fit the model: {detail[:300]}"
        ) from None


def train_local(
    base: TensorMapping,
    request: DataRequest,
    config: LocalTrainConfig,
    ledger: dict[str, Any] | None,
) -> LocalTrainResult:
    """Train the task from `base` on the client's data; record DP steps into the carried `ledger`."""
    _check_config(config)
    torch.set_num_threads(1)
    task = load_task(config.task)
    data = local_data(config.task, request)
    num_samples = len(data.train)  # type: ignore[arg-type]
    privacy = PrivacyLedger.from_dict(ledger) if ledger else PrivacyLedger(config.accountant)
    device = torch.device(config.device or _process_device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = task.build_model(config.seed)
        load_numpy(model, base)
        # Federated evaluation: the model this round starts from, scored on the client's own test data.
        evaluation = _evaluate_local(task, model, data, device)
        model.to(device)
        model.train()
        loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(
            data.train, batch_size=config.batch_size, shuffle=True
        )
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
        module: nn.Module = model
        sample_rate = 1.0
        if config.dp:
            check_private(task, model)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Secure RNG turned off")
                module, optimizer, dp_loader = PrivacyEngine(accountant="rdp").make_private(
                    module=model,
                    optimizer=optimizer,
                    data_loader=loader,
                    noise_multiplier=config.noise_multiplier,
                    max_grad_norm=config.max_grad_norm,
                    poisson_sampling=True,
                )
            # Record the sample rate Opacus actually uses (1 / batches per epoch), not the planned one.
            sample_rate, loader = float(dp_loader.sample_rate), dp_loader
        with warnings.catch_warnings():
            # Opacus' hooks on the first layer fire although the input needs no gradient: expected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            steps, metrics = _fit(task, module, optimizer, loader, config, device)
    if config.dp:
        assert config.noise_multiplier is not None  # _check_config guarantees it
        privacy.record(config.noise_multiplier, sample_rate, steps)
    trained = to_numpy(model)  # `model` is the unwrapped module: keys without Opacus' "_module." prefix
    return LocalTrainResult(
        delta={k: trained[k] - np.asarray(base[k], dtype=np.float32) for k in trained},
        num_samples=num_samples,
        steps=steps,
        metrics={**metrics, **evaluation},
        ledger=privacy.to_dict(),
        epsilon=privacy.epsilon(config.delta) if config.dp else None,
    )


def _evaluate_local(task: Task, model: nn.Module, data: LocalData, device: torch.device) -> dict[str, float]:
    """``eval_<metric>`` and ``eval_samples`` of `model` on the client's test split; empty without one."""
    if data.test is None:
        return {}
    try:
        scores = score(task, model, data.test, device)
    except Exception as exc:  # the task's metrics or model on its own test data: the task's fault, in one line
        raise TaskError(f"task {task.name}: evaluating on the test data failed: {type(exc).__name__}: {exc}") from exc
    return {EVAL_SAMPLES: float(len(data.test)), **{f"{EVAL_PREFIX}{k}": v for k, v in scores.items()}}  # type: ignore[arg-type]


def _fit(
    task: Task,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    config: LocalTrainConfig,
    device: torch.device,
) -> tuple[int, dict[str, float]]:
    module.train()
    steps, seen, loss_sum = 0, 0, 0.0
    sums: dict[str, float] = {}
    # FedProx (Li et al. 2020): the gradient of mu/2 ||w - w_round||^2 is mu (w - w_round). It is applied as a
    # step of its own after the optimizer's, so under DP it is neither clipped nor noised: it depends only on
    # the round's model, which every client already has, and spends no privacy.
    anchors = [p.detach().clone() for p in module.parameters()] if config.proximal_mu else []
    pull = min(1.0, config.lr * config.proximal_mu)  # past 1 it would overshoot the round's model
    started = time.perf_counter()
    try:
        for _ in range(config.epochs):
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                if task.train_step is supervised_step:
                    out = module(x)
                    loss = task.loss(out, y)
                else:
                    out, loss = None, task.train_step(module, (x, y), task.loss)
                loss.backward()  # type: ignore[no-untyped-call]
                # A Poisson batch may be empty: the step still happens (noise only) and still counts.
                optimizer.step()
                if anchors:
                    with torch.no_grad():
                        for parameter, anchor in zip(module.parameters(), anchors, strict=True):
                            parameter.sub_(pull * (parameter - anchor))
                steps += 1
                if len(y):
                    seen += len(y)
                    loss_sum += float(loss.item()) * len(y)
                    if out is not None:
                        for name, value in task.metrics(out.detach(), y).items():
                            sums[name] = sums.get(name, 0.0) + float(value) * len(y)
                if config.max_steps is not None and steps >= config.max_steps:
                    break
            if config.max_steps is not None and steps >= config.max_steps:
                break
    except (TaskError, DataUnavailable):
        raise
    except Exception as exc:  # the task's own code failed mid-round: decline it, never poison the queue
        raise TaskError(f"task {task.name}: training failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
    seconds = time.perf_counter() - started
    return steps, {
        "loss": loss_sum / max(seen, 1),
        **{name: total / max(seen, 1) for name, total in sums.items()},
        "samples_per_second": seen / seconds if seconds > 0 else 0.0,
        "train_seconds": seconds,
    }


@lru_cache(maxsize=4)
def central_test(task: str, data_dir: str | None) -> Samples | None:
    """The task's central test data, read once per process; None when the task has none."""
    loaded = load_task(task)
    if loaded.test_data is None:
        return None
    return loaded.test_data(Path(data_dir) if data_dir else None)


def evaluate(
    weights: TensorMapping,
    *,
    task: str,
    data_dir: str | None,
    batch_size: int = 1000,
    limit: int | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """The task's mean "loss" and metrics ("accuracy" by default) of `weights` on the first `limit` samples
    of its central test data; empty when the task has none."""
    loaded = load_task(task)
    data = central_test(task, data_dir)
    if data is None:
        return {}
    net = loaded.build_model(seed=0)
    load_numpy(net, weights)
    size = len(data)  # type: ignore[arg-type]
    total = size if limit is None else max(0, min(limit, size))
    return score(loaded, net, Subset(data, range(total)), torch.device(device or _process_device), batch_size)


def score(
    task: Task, model: nn.Module, data: Samples, device: torch.device, batch_size: int = 1000
) -> dict[str, float]:
    """The task's mean loss and metrics of `model` over `data`, each batch weighted by its size."""
    model.to(device)
    model.eval()
    loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(data, batch_size=batch_size)
    seen, loss_sum = 0, 0.0
    sums: dict[str, float] = {}
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            seen += len(y)
            loss_sum += float(task.loss(out, y).item()) * len(y)
            for name, value in task.metrics(out, y).items():
                sums[name] = sums.get(name, 0.0) + float(value) * len(y)
    return {"loss": loss_sum / max(seen, 1), **{name: v / max(seen, 1) for name, v in sums.items()}}


def check_weights(weights: TensorMapping, task: str) -> None:
    """ConfigError("weights", ...) naming the first key or shape that does not fit the task's model."""
    load_numpy(load_task(task).build_model(seed=0), weights)


def initial_weights(task: str, *, seed: int) -> TensorDict:
    """The seeded initial weights of `task`'s model as numpy (the run's model version 0)."""
    return to_numpy(load_task(task).build_model(seed))
