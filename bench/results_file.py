"""bench/RESULTS.md: each benchmark owns one marked section and replaces only that one."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(section: str, begin: str, end: str) -> None:
    """Put `section` (which starts with `begin` and ends with `end`) in place of the old one, or append it.

    The file is read just before it is written, so sections other scripts wrote meanwhile stay."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n\n"
    start, stop = text.find(begin), text.find(end)
    if start != -1 and stop > start:
        text = text[:start] + section + text[stop + len(end) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
    print(f"recorded in {RESULTS.parent.name}/{RESULTS.name}")
