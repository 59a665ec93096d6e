"""The image's wheel holds every package of the distribution.

ops/Dockerfile builds its wheel from the build context that .dockerignore lets through. A package left
out of that allowlist builds a wheel that imports fine for `fedbus --help` and fails only when a role
starts inside a container, which only the slow compose suite would see. This test builds the wheel the
way the image does, from the same filtered context, and compares its packages with setup.cfg's.
"""

from __future__ import annotations

import configparser
import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _rules() -> list[tuple[bool, str]]:
    """(.dockerignore's patterns in order: (is_exception, pattern)."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        rules.append((exception, line.removeprefix("!").rstrip("/")))
    return rules


def _ignored(relative: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for exception, pattern in rules:
        if pattern.startswith("**/"):
            matched = any(fnmatch.fnmatch(part, pattern.removeprefix("**/")) for part in parts)
        else:
            matched = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if matched:
            ignored = not exception
    return ignored


def _context(destination: Path) -> None:
    rules = _rules()
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for relative in tracked:
        source = ROOT / relative
        if source.is_file() and not _ignored(relative, rules):
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _declared_packages() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return {line.strip().rstrip("*") for line in config["options.packages.find"]["include"].split() if line.strip()}


def test_dockerignore_rules_follow_dockers_last_match_wins() -> None:
    rules = [(False, "*"), (True, "services"), (False, "**/__pycache__")]
    assert _ignored("README.md", rules)
    assert not _ignored("services/api/app.py", rules)
    assert _ignored("services/__pycache__/app.pyc", rules)


def test_the_wheel_built_from_the_image_context_holds_every_declared_package(tmp_path: Path) -> None:
    context = tmp_path / "context"
    _context(context)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."],
        cwd=context,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/", 1)[0] for name in archive.namelist() if name.endswith("/__init__.py")}

    assert _declared_packages() <= top_level, f"missing from the image's wheel: {_declared_packages() - top_level}"
