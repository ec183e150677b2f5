"""Running the installed ``llmbackend`` command from tests (not a test module)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

CLI = str(Path(sys.executable).parent / "llmbackend")

#: Variables that would change what the CLI does (configuration, provider keys, the demo's
#: probes): never inherited from the developer's shell.
_SCRUBBED = re.compile(
    r"^(LLMBACKEND_|LLM_|OPENAI_|ANTHROPIC_|GEMINI_|GOOGLE_|COHERE_|OLLAMA_|LLAMACPP_)"
)


async def run(
    *args: str, cwd: Path, stdin: bytes | None = None, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the CLI without blocking the loop (fake servers live on this loop), with HOME in
    ``cwd`` so no user config leaks in, a fixed width and no colour."""
    environment = {k: v for k, v in os.environ.items() if not _SCRUBBED.match(k)}
    environment.update({"HOME": str(cwd), "COLUMNS": "160", "NO_COLOR": "1", **(env or {})})
    process = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        cwd=cwd,
        env=environment,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def table_rows(text: str) -> dict[str, list[str]]:
    """The body rows of the rich tables in ``text``: first cell → the other cells."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            if cells[0]:
                rows[cells[0]] = cells[1:]
    return rows
