"""Where benchmarks keep their latest figures: one section each of docs/performance.md."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "performance.md"
DOC_INTRO = """# Performance

Figures written by the benchmarks under `bench/` (run them on an otherwise idle
machine; absolute numbers depend on the machine, the ratios are what to
compare).  Each section is rewritten by its benchmark with its latest run.
"""


def write_section(heading: str, section: str) -> None:
    """Replace the section that starts with ``heading`` (or append it), keeping the others."""
    if DOCS.exists():
        text = DOCS.read_text()
    else:
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        text = DOC_INTRO
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        tail = "".join(lines[end:])
        text = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    DOCS.write_text(text)


def publish(console: str, heading: str, section: str, write_docs: bool) -> None:
    """Print a run's figures and, unless told not to, keep them as the section ``heading``."""
    print(console)
    if write_docs:
        write_section(heading, section)
        print(f"figures written to {DOCS.relative_to(REPO)} ({heading[3:]})")
