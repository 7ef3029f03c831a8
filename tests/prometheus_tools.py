"""promtool for the tests: the one on PATH, else Debian's, unpacked under .tools/ (see tests/debtools.py)."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.debtools import debian_binary

PROJECT = Path(__file__).resolve().parent.parent
ALERTS = PROJECT / "deploy/prometheus/alerts.yml"


@functools.cache
def promtool() -> Path:
    """A promtool that runs: an installed one first, so a machine with Prometheus needs no download."""
    found = shutil.which("promtool")
    return Path(found) if found else debian_binary("prometheus", "promtool")


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """promtool with `args`; the caller checks the exit code and output."""
    return subprocess.run(
        [str(promtool()), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def promtool_test(rules_file: Path, tests_yaml: str) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` on a test file made of `tests_yaml` and `rule_files: [rules_file]`.

    `tests_yaml` is the rest of a promtool unit-test file (`evaluation_interval`, `tests`, ...), without
    `rule_files`: the rules are named here by absolute path, so the test file can live in a temporary folder.
    """
    if re.search(r"^rule_files\s*:", tests_yaml, flags=re.MULTILINE):
        raise ValueError("tests_yaml names its own rule_files; pass the rules as rules_file instead")
    with tempfile.TemporaryDirectory(prefix="promtool-test-") as folder:
        test_file = Path(folder) / "tests.yml"
        # A JSON string is a YAML string too, so any path is quoted right.
        rule_file = json.dumps(str(rules_file.resolve()))
        test_file.write_text(f"rule_files:\n  - {rule_file}\n\n{tests_yaml}")
        return run_promtool("test", "rules", test_file, cwd=Path(folder))
