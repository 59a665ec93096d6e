"""benchmarks/flower.py on tiny settings: the fedbus rows always, the Flower rows only where its venv exists.

No timing is asserted; what must hold is that every system runs the task and, being the same seeded task with
the same learning code, lands on (nearly) the same accuracy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest

from benchmarks import flower
from services.roots.pool import process_pool

pytestmark = [pytest.mark.slow]

TINY = flower.Sizes(
    clients=3, rounds=1, train_limit=150, eval_limit=100, data_dir=os.environ.get("FEDBUS_DATA_DIR") or None
)


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with process_pool(2) as executor:
        yield executor


@pytest.mark.integration
@pytest.mark.deployed
@pytest.mark.timeout(900)
def test_fedbus_side_runs_and_the_section_renders(pool: ProcessPoolExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flower, "flower_ready", lambda venv=flower.VENV: False)

    lines = flower.run(
        pool,
        data_dir=TINY.data_dir,
        clients=TINY.clients,
        rounds=TINY.rounds,
        train_limit=TINY.train_limit,
        eval_limit=TINY.eval_limit,
        target=0.05,
        workers=2,
        install=False,
    )

    text = "\n".join(lines)
    assert "| system | engine | rounds |" in text
    for engine in ("embedded, fp32", "embedded, int8", "deployed (fedbus up), fp32"):
        row = next(line for line in lines if line.startswith(f"| fedbus | {engine} |"))
        assert "failed" not in row and f"| {TINY.rounds} |" in row, row
    assert "Flower skipped: no Flower environment" in text and "| Flower |" not in text


@pytest.mark.skipif(
    not flower.flower_ready(),
    reason=f"no Flower environment at {flower.VENV}: benchmarks/flower.py creates it on its first full run "
    "(`make bench`, or `python -c 'from benchmarks import flower; flower.ensure_flower()'`)",
)
@pytest.mark.timeout(900)
def test_flower_engines_reach_fedbus_accuracy_on_the_same_task(pool: ProcessPoolExecutor) -> None:
    ours = flower.run_fedbus_embedded(pool, TINY, compression="fp32")
    assert ours.error is None and len(ours.rounds) == TINY.rounds

    for simulation in (True, False):
        theirs = flower.run_flower(flower.VENV, TINY, simulation=simulation, timeout_s=600)

        assert theirs.error is None, theirs.error
        assert [r.round for r in theirs.rounds] == list(range(1, TINY.rounds + 1))
        # Same split, seeds, noise and learning code: only float summation order differs in FedAvg.
        assert abs(theirs.rounds[-1].accuracy - ours.rounds[-1].accuracy) <= 0.02
