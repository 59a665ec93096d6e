"""What a role imports before it can register or serve: torch (seconds of CPU per process, times every client of
a machine) is imported by the training processes and after registration, never on the way to it."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "opacus", "torchvision")


def _imported_after(module: str) -> list[str]:
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.split()


@pytest.mark.parametrize("module", ["services.roots.client", "services.roots.coordinator", "services.cli.main"])
def test_a_role_reaches_registration_without_importing_torch(module: str) -> None:
    assert _imported_after(module) == []


def test_the_pool_imports_torch_in_its_workers_only() -> None:
    assert _imported_after("services.roots.pool") == []
