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


@pytest.mark.parametrize(
    "module", ["services.roots.client", "services.roots.coordinator", "services.cli.main", "workers.client.worker"]
)
def test_a_role_reaches_registration_without_importing_torch(module: str) -> None:
    assert _imported_after(module) == []


def test_the_public_package_imports_torch_when_a_name_that_needs_it_is_used() -> None:
    assert _imported_after("fedbus") == []
    assert _imported_after("fedbus.data") == []
    code = "import sys, fedbus; fedbus.Task; print('torch' in sys.modules, fedbus.Samples is fedbus.data.Samples)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["True", "True"]


def test_the_pool_imports_torch_in_its_workers_only() -> None:
    assert _imported_after("services.roots.pool") == []
