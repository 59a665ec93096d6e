"""The public Task API: a task, its data sources and how a reference finds it, each refusal in one line."""

from __future__ import annotations

import configparser
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from contracts.catalog import BUILTIN_TASK_REFS, BUILTIN_TASKS, TASK_ENTRY_POINTS
from fedbus import (
    DataRequest,
    DataUnavailable,
    LocalData,
    Simulation,
    Task,
    TaskError,
    check_private,
    image_folder,
    load_task,
    local_files,
    npz_files,
)
from ops.settings import TASK_PATH_ENV
from workers.learning.training import prepare

ROOT = Path(__file__).resolve().parents[3]


def write_npz(folder: Path, name: str, samples: int, shape: tuple[int, ...] = (8,), classes: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(samples)
    np.savez(folder / name, x=rng.random((samples, *shape)).astype(np.float32), y=rng.integers(0, classes, samples))


def small_task(**changes: object) -> Task:
    options: dict[str, object] = {
        "name": "tiny",
        "model": lambda: nn.Sequential(nn.Linear(8, 3)),
        "data": lambda request: local_files(request.location),
    }
    return Task(**{**options, **changes})  # type: ignore[arg-type]


def test_the_numpy_layout_reads_train_and_test_as_float_samples_and_integer_labels(tmp_path: Path) -> None:
    write_npz(tmp_path, "train.npz", 20)
    write_npz(tmp_path, "test.npz", 5)

    data = npz_files(tmp_path)

    assert len(data.train) == 20 and data.test is not None and len(data.test) == 5  # type: ignore[arg-type]
    x, y = data.train[0]
    assert x.dtype == torch.float32 and x.shape == (8,) and y.dtype == torch.int64


def test_the_image_layout_reads_class_folders_with_labels_in_sorted_order(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("test", 1)):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((6, 6), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")

    data = image_folder(tmp_path)

    assert len(data.train) == 6 and data.test is not None and len(data.test) == 2  # type: ignore[arg-type]
    labels = [int(data.train[i][1]) for i in range(6)]
    assert labels == [0, 0, 0, 1, 1, 1]
    assert data.train[0][0].shape == (1, 6, 6) and float(data.train[0][0].max()) <= 1.0


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "neither train.npz"),
        (lambda root: (root.mkdir(), (root / "train.npz").write_bytes(b"not a zip")), "not a readable .npz"),
        (lambda root: (root.mkdir(), np.savez(root / "train.npz", x=np.zeros((3, 2)))), "no array 'y'"),
        (
            lambda root: (root.mkdir(), np.savez(root / "train.npz", x=np.zeros((3, 2)), y=np.zeros(2, int))),
            "3 samples",
        ),
        (
            lambda root: (root.mkdir(), np.savez(root / "train.npz", x=np.zeros((0, 2)), y=np.zeros(0, int))),
            "no samples",
        ),
        (
            lambda root: (root.mkdir(), np.savez(root / "train.npz", x=np.zeros((3, 2)), y=np.zeros(3))),
            "integer labels",
        ),
        (
            lambda root: (write_npz(root, "train.npz", 4, (8,)), write_npz(root, "test.npz", 4, (9,))),
            "train samples are (8,) but test samples are (9,)",
        ),
        (lambda root: (root.mkdir(), (root / "train" / "a").mkdir(parents=True)), "no images"),
    ],
)
def test_a_missing_empty_or_malformed_folder_is_one_line_naming_it(tmp_path: Path, build: object, says: str) -> None:
    root = tmp_path / "site"
    build(root)  # type: ignore[operator]

    with pytest.raises(DataUnavailable) as error:
        local_files(root)

    assert says in str(error.value) and "\n" not in str(error.value)


def test_images_of_different_sizes_are_refused_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((6, 6), dtype=np.uint8)).save(folder / "0.png")
    Image.fromarray(np.zeros((7, 6), dtype=np.uint8)).save(folder / "1.png")

    with pytest.raises(DataUnavailable, match=r"1\.png is \(1, 7, 6\).*\(1, 6, 6\)"):
        image_folder(tmp_path)


def test_a_simulated_share_is_the_seeded_partition_every_client_computes_alike() -> None:
    labels = np.arange(100) % 10
    shares = [Simulation(scheme="iid", clients=4, index=i, seed=3, limit=80).indices(labels) for i in range(4)]

    assert sorted(np.concatenate(shares).tolist()) == list(range(80))
    assert np.array_equal(shares[1], Simulation(scheme="iid", clients=4, index=1, seed=3, limit=80).indices(labels))
    with pytest.raises(ValueError, match="either a location or a simulation"):
        DataRequest()


def test_a_task_builds_the_same_model_from_the_same_seed_without_touching_the_callers_random_state() -> None:
    task = small_task()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)

    a, b = task.build_model(7), task.build_model(7)

    assert torch.equal(torch.rand(1), expected_next)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(a.parameters()), next(task.build_model(8).parameters()))


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"name": "bad name"}, "task name"),
        ({"model": 3}, "model must be callable"),
        ({"data": None}, "data must be callable"),
    ],
)
def test_a_malformed_task_is_refused_where_it_is_made(changes: dict[str, object], says: str) -> None:
    with pytest.raises(TaskError, match=says):
        small_task(**changes)


def test_a_model_that_is_no_module_or_fails_to_build_is_a_task_error() -> None:
    with pytest.raises(TaskError, match=r"must return a torch\.nn\.Module"):
        small_task(model=lambda: "a string").build_model(0)
    with pytest.raises(TaskError, match="building the model failed: ZeroDivisionError"):
        small_task(model=lambda: 1 / 0).build_model(0)


def test_a_model_opacus_cannot_train_is_refused_naming_the_layer_and_the_fix() -> None:
    task = small_task(model=lambda: nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)))

    with pytest.raises(TaskError) as error:
        check_private(task, task.build_model(0))

    message = str(error.value)
    assert "layer '1' (BatchNorm1d)" in message and "ModuleValidator.fix" in message and "\n" not in message


def test_a_loader_that_raises_is_a_data_error_and_one_that_returns_the_wrong_type_a_task_error(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailable, match="loading data failed: KeyError"):
        small_task(data=lambda request: {}["x"]).load(DataRequest(location=tmp_path))
    with pytest.raises(TaskError, match=r"must return fedbus\.LocalData"):
        small_task(data=lambda request: [1, 2]).load(DataRequest(location=tmp_path))


def test_prepare_refuses_data_whose_shape_does_not_fit_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_npz(tmp_path / "site", "train.npz", 10, shape=(5,))
    write_module(tmp_path, "shape_task", "TASK")
    monkeypatch.setenv(TASK_PATH_ENV, str(tmp_path))

    with pytest.raises(DataUnavailable, match=r"training samples of shape \(5,\) do not fit the model"):
        prepare("shape_task:TASK", DataRequest(location=tmp_path / "site"), private=True)


def write_module(folder: Path, module: str, attribute: str, body: str = "") -> None:
    (folder / f"{module}.py").write_text(
        textwrap.dedent(
            f"""
            from torch import nn
            from fedbus import Task, local_files

            {attribute} = Task(
                name="{module}",
                model=lambda: nn.Sequential(nn.Linear(8, 3)),
                data=lambda request: local_files(request.location),
            )
            """
        )
        + textwrap.dedent(body)
    )


def test_a_task_is_found_by_module_path_in_the_task_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(tmp_path, "found_task", "TASK", "def make():\n    return TASK\n")
    monkeypatch.setenv(TASK_PATH_ENV, str(tmp_path))

    assert load_task("found_task:TASK").name == "found_task"
    assert load_task("found_task:make") is load_task("found_task:TASK")  # a factory of no arguments


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        ("no_such_module_anywhere:task", "cannot import no_such_module_anywhere: ModuleNotFoundError"),
        ("broken_task:TASK", "cannot import broken_task: ZeroDivisionError"),
        ("found_task2:MISSING", "has no attribute MISSING"),
        ("found_task2:NOT_A_TASK", "is a int, not a fedbus.Task"),
        ("nope", "unknown task 'nope'"),
        ("a b", "neither a task name nor package.module:attribute"),
    ],
)
def test_a_task_that_cannot_be_loaded_is_one_line_naming_it(
    ref: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_task.py").write_text("1 / 0\n")
    write_module(tmp_path, "found_task2", "TASK", "NOT_A_TASK = 3\n")
    monkeypatch.setenv(TASK_PATH_ENV, str(tmp_path))

    with pytest.raises(TaskError) as error:
        load_task(ref)

    assert says in str(error.value) and "\n" not in str(error.value)
    sys.modules.pop("broken_task", None)


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_each_builtin_is_a_task_loaded_by_its_name(name: str) -> None:
    task = load_task(name)

    assert task.name == name and task.test_data is not None
    assert {"input_shape", "normalize"} <= set(task.preprocessing)


def test_the_builtins_are_registered_as_entry_points_where_the_table_says() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = setup["options.entry_points"][TASK_ENTRY_POINTS].strip().splitlines()
    registered = dict(line.replace(" ", "").split("=") for line in lines)

    assert registered == dict(BUILTIN_TASK_REFS)


def test_a_builtin_reads_a_sites_own_images_in_its_normalized_form(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), y=rng.integers(0, 10, 12))

    data = load_task("mnist_dp_cnn").load(DataRequest(location=tmp_path))

    assert isinstance(data, LocalData) and data.train[0][0].shape == (1, 28, 28)
    assert prepare("mnist_dp_cnn", DataRequest(location=tmp_path), private=True) == 12
