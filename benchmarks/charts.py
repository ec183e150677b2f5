"""PNG charts of the headline numbers (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
from summary import LABELS, med

OURS = "#1f77b4"
OTHERS = "#9a9a9a"
FLOOR = "#2ca02c"


def _colour(name: str) -> str:
    if name.startswith("llmbackend"):
        return OURS
    return FLOOR if name in ("aiohttp", "httpx") else OTHERS


def _bars(path: Path, names: list[str], values: list[float | None], title: str, unit: str) -> None:
    shown = [(n, v) for n, v in zip(names, values, strict=True) if v is not None]
    if not shown:
        return
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(shown) + 1.2))
    labels = [LABELS.get(n, n) for n, _ in shown]
    numbers = [v for _, v in shown if v is not None]
    axes.barh(labels, numbers, color=[_colour(n) for n, _ in shown])
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel(f"{unit} (log scale)")
    axes.set_title(title)
    for index, value in enumerate(numbers):
        axes.text(value, index, f" {value:,.1f}", va="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _throughput(path: Path, table: dict[str, dict[str, Any]], order: list[str]) -> bool:
    keys = sorted({key for name in order for key in table[name]["throughput"]})
    delays = sorted({int(key.split("-")[0][1:]) for key in keys})
    levels = sorted({int(key.split("-")[1][1:]) for key in keys})
    if not keys:
        return False
    figure, all_axes = plt.subplots(1, len(delays), figsize=(6 * len(delays), 4.5), squeeze=False)
    width = 0.8 / len(levels)
    for axes, delay in zip(all_axes[0], delays, strict=True):
        for offset, level in enumerate(levels):
            values = [
                med(table[name]["throughput"].get(f"d{delay}-c{level}", {}).get("rps", [])) or 0
                for name in order
            ]
            axes.bar(
                [i + offset * width for i in range(len(order))],
                values,
                width,
                label=f"concurrency {level}",
            )
        axes.set_xticks([i + width * (len(levels) - 1) / 2 for i in range(len(order))])
        axes.set_xticklabels([LABELS[n] for n in order], rotation=30, ha="right", fontsize=8)
        axes.set_ylabel("requests/s")
        axes.set_title(f"Throughput, server delay {delay} ms")
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def draw(table: dict[str, dict[str, Any]], order: list[str], out: Path) -> list[str]:
    """Write the charts into ``out``; their file names."""
    written = []
    if _throughput(out / "throughput.png", table, order):
        written.append("throughput.png")
    _bars(
        out / "cpu_per_request.png",
        order,
        [table[n].get("cpu_us") for n in order],
        "Client CPU per non-streamed request",
        "µs",
    )
    written.append("cpu_per_request.png")
    imports = [n for n in [*order, "llmbackend deps"] if n in table and n != "litellm-router"]
    _bars(
        out / "import_time.png",
        imports,
        [table[n].get("import_ms") for n in imports],
        "Import time in a fresh interpreter",
        "ms",
    )
    written.append("import_time.png")
    _bars(
        out / "stream_cpu_per_chunk.png",
        order,
        [table[n].get("chunk_500_us") for n in order],
        "Client CPU per streamed chunk (500-chunk stream)",
        "µs",
    )
    written.append("stream_cpu_per_chunk.png")
    return [name for name in written if (out / name).exists()]
