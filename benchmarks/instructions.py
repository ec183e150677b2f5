"""Instructions per request, counted by valgrind (callgrind): a noise-free cross-check.

CPU time on a shared machine moves with whatever else runs; an instruction count does not.
``run.py --instructions`` runs this script under ``valgrind --tool=callgrind`` twice per
client, with ``FEW`` and ``FEW + MORE`` sequential requests, and divides the difference by
``MORE``: start-up and imports cancel out. User-space instructions only (the kernel's work
for the sockets is the same for every client), so the ratio between clients is larger than
the CPU-time ratio.

Run: ``python benchmarks/instructions.py CLIENT URL COUNT``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FEW, MORE = 50, 500


async def calls(name: str, url: str, count: int) -> None:
    from clients import CLIENTS, model_name

    client = CLIENTS[name](url)
    await client.open()
    for _ in range(count):
        await client.chat(model_name())
    await client.close()


def counted(name: str, url: str, count: int, environment: dict[str, str]) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(HERE / "instructions.py"),
        name,
        url,
        str(count),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
    found = re.search(r"Collected : (\d+)", completed.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {completed.stderr[-300:]}")
    return int(found[1])


def per_request(name: str, url: str, environment: dict[str, str]) -> float | None:
    """Instructions per request of client ``name`` (``None`` without valgrind)."""
    if shutil.which("valgrind") is None:
        return None
    few = counted(name, url, FEW, environment)
    many = counted(name, url, FEW + MORE, environment)
    return (many - few) / MORE


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    asyncio.run(calls(sys.argv[1], sys.argv[2], int(sys.argv[3])))
