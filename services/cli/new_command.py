"""`fedbus new NAME`: a task project to start from, which `fedbus run --config NAME/fedbus.toml` trains at once.

NAME/ holds `task.py` (a Task: a small MLP and a data function reading the client's folder with
`fedbus.local_files`), `fedbus.toml` (the run, DP on, ``client_data = "sites"``), a README, `test_task.py`
(the task loads, Opacus can train it, it fits the data) and the data: scikit-learn's bundled digits split
into three sites' folders (``sites/site-N/train.npz`` and ``test.npz``) and a held-out set for central
evaluation (``heldout.npz``). The templates are the files of templates/new/ (``$name`` is NAME).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import string
from pathlib import Path
from typing import TypeVar

from contracts.errors import ConfigError

_Parser = TypeVar("_Parser", bound=argparse.ArgumentParser)

TEMPLATES = Path(__file__).resolve().parent / "templates" / "new"
FILES = ("task.py", "fedbus.toml", "README.md", "test_task.py")
SITES = 3
HELDOUT = 297  # of the 1,797 digits: the aggregator's test set; the other 1,500 go to the sites
SITE_TEST = 0.2  # of each site's share: its own test.npz
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # a task name (fedbus.Task) and a plain folder name


def add_new_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    new = commands.add_parser(
        "new",
        help="scaffold a task project (your model and data) that `fedbus run --config NAME/fedbus.toml` trains",
        description="Create NAME/ with task.py (a Task: model and data function), fedbus.toml (3 clients, DP "
        "on), README.md, test_task.py and three sites' data written from scikit-learn's bundled digits. An "
        "existing folder that is not empty is refused.",
    )
    new.add_argument("name", help="the project's folder and its task's name (letters, digits, '_', '.', '-')")
    new.add_argument("--dir", type=Path, default=Path("."), help="the folder to create NAME in (default: here)")


def new_command(args: argparse.Namespace) -> int:
    root = scaffold(args.name, args.dir)
    print(f"created {root}/: task.py, fedbus.toml, README.md, test_task.py, heldout.npz, sites/site-1..{SITES}")
    print(f"  fedbus run --config {root / 'fedbus.toml'}      # federate it: {SITES} clients, DP on")
    print(f"  python -m pytest {root / 'test_task.py'}   # check the task against its data")
    return 0


def scaffold(name: str, parent: Path) -> Path:
    """Write the project `parent`/`name` whole (or nothing); ConfigError when the name is not a plain task
    name or the folder exists and is not empty."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError("name", f"{name!r:.100} must be 1-100 letters, digits, '_', '.' or '-' (no '/')")
    root = parent / name
    if root.exists() and not (root.is_dir() and not any(root.iterdir())):
        raise ConfigError("name", f"{root} already exists and is not an empty folder: choose another NAME or --dir")
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{name}-{secrets.token_hex(4)}.new"
    staging.mkdir()
    try:
        for file in FILES:
            template = string.Template((TEMPLATES / f"{file}.tmpl").read_text(encoding="utf-8"))
            (staging / file).write_text(template.substitute(name=name), encoding="utf-8")
        write_digits(staging)
        os.replace(staging, root)  # onto an empty folder too
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def write_digits(root: Path, *, sites: int = SITES, seed: int = 0) -> None:
    """scikit-learn's bundled digits (no download), shuffled with `seed`: `heldout.npz`, then `sites` equal
    shares as ``sites/site-N/{train,test}.npz``; x as 64 pixels of 0-16 (uint8), y the digit."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order].astype(np.uint8), y[order].astype(np.int64)
    np.savez_compressed(root / "heldout.npz", x=x[:HELDOUT], y=y[:HELDOUT])
    for number, share in enumerate(np.array_split(np.arange(HELDOUT, len(y)), sites), start=1):
        site = root / "sites" / f"site-{number}"
        site.mkdir(parents=True)
        cut = len(share) - round(len(share) * SITE_TEST)
        np.savez_compressed(site / "train.npz", x=x[share[:cut]], y=y[share[:cut]])
        np.savez_compressed(site / "test.npz", x=x[share[cut:]], y=y[share[cut:]])
