"""The benchmark figures as PNGs beside docs/benchmarks.md.

matplotlib's object API (a bare Figure) renders through Agg on savefig and touches no global pyplot state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def privacy_utility(
    path: Path, curves: Mapping[str, Sequence[tuple[float, float]]], no_dp: Mapping[str, float], title: str
) -> Path:
    """Final test accuracy against epsilon, one line per partition; no-DP accuracy as a dashed level."""
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.subplots()
    epsilons = sorted({e for points in curves.values() for e, _ in points})
    for (label, points), color in zip(curves.items(), COLORS, strict=False):
        ax.plot([e for e, _ in points], [a for _, a in points], marker="o", color=color, label=f"{label}, DP")
        if label in no_dp:
            ax.axhline(no_dp[label], linestyle="--", color=color, alpha=0.7, label=f"{label}, no DP")
    ax.set_xscale("log")
    ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
    ax.minorticks_off()
    ax.set_xlabel("epsilon (delta = 1e-5, log scale)")
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def accuracy_over_time(path: Path, curves: Mapping[tuple[str, str], Sequence[tuple[float, float]]], title: str) -> Path:
    """Test accuracy against wall-clock seconds, one line per (group, mode): a colour per group, a style per mode."""
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.subplots()
    colors = dict(zip(dict.fromkeys(group for group, _ in curves), COLORS, strict=False))
    modes = list(dict.fromkeys(mode for _, mode in curves))
    for (group, mode), points in curves.items():
        style = ("--", "-", ":", "-.")[modes.index(mode) % 4]
        x, y = [t for t, _ in points], [a for _, a in points]
        ax.plot(x, y, style, marker="o", markersize=3, color=colors.get(group, "black"), label=f"{mode}, {group}")
    ax.set_xlabel("wall-clock seconds since the run started")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def scale(
    path: Path,
    clients: Sequence[int],
    times: Mapping[str, Sequence[float]],
    memory: Mapping[str, Sequence[float]],
    title: str,
) -> Path:
    """Two panels against the number of clients (log scale): seconds per round, and peak resident memory."""
    fig = Figure(figsize=(9, 3.8), dpi=110)
    left, right = fig.subplots(1, 2)
    for ax, series, unit in ((left, times, "seconds per round (median)"), (right, memory, "peak RSS (MB)")):
        for (label, values), color in zip(series.items(), COLORS, strict=False):
            ax.plot(clients, values, marker="o", color=color, label=label)
        ax.set_xscale("log")
        ax.set_xticks(list(clients), [str(c) for c in clients])
        ax.minorticks_off()
        ax.set_xlabel("clients per round (log scale)")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def accuracy_per_round(
    path: Path, curves: Mapping[str, Sequence[tuple[int, float]]], aim: float | None, title: str, x_label: str = "round"
) -> Path:
    """Test accuracy after each round, one line per run; `aim` as a dotted level."""
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.subplots()
    for (label, points), color in zip(curves.items(), COLORS, strict=False):
        ax.plot([r for r, _ in points], [a for _, a in points], marker="o", markersize=3, color=color, label=label)
    if aim is not None:
        ax.axhline(aim, linestyle=":", color="gray", label=f"aim {aim:.0%}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy")
    lowest = min((a for points in curves.values() for _, a in points), default=0.5)
    ax.set_ylim(max(0.0, min(0.5, math.floor(lowest * 10 - 0.5) / 10)), 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def grouped_bars(
    path: Path, panels: Mapping[str, Mapping[str, Mapping[str, float | None]]], title: str, missing: str = "n/a"
) -> Path:
    """One panel per y-axis label: a group of bars per x label (the outer key), a bar per series, a colour per
    series; a value None is drawn as no bar with `missing` written where it would stand."""
    fig = Figure(figsize=(4.5 * len(panels), 3.8), dpi=110)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (unit, groups) in zip(axes, panels.items(), strict=True):
        series = list(dict.fromkeys(name for bars in groups.values() for name in bars))
        width = 0.8 / max(1, len(series))
        labelled: set[str] = set()
        for index, (name, color) in enumerate(zip(series, COLORS, strict=False)):
            for slot, bars in enumerate(groups.values()):
                x = slot - 0.4 + width * (index + 0.5)
                value = bars.get(name)
                if value is None:
                    ax.text(x, 0, missing, rotation=90, ha="center", va="bottom", fontsize=6, color=color)
                else:
                    ax.bar(x, value, width, color=color, label=None if name in labelled else name)
                    labelled.add(name)
        ax.set_xticks(range(len(groups)), list(groups))
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3, axis="y")
        if labelled:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path
