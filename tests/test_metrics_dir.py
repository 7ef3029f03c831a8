"""`serve` with processes of its own counts into a fresh directory; a killed one's goes at the next start."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from postkasse import metrics_dir


def test_a_fresh_directory_for_this_serve_and_none_left_of_a_dead_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(metrics_dir.ENV, raising=False)
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = tmp_path / f"{metrics_dir.PREFIX}{int(ended.stdout)}-abc"
    alive = tmp_path / f"{metrics_dir.PREFIX}{os.getppid()}-def"  # another serve, still running
    dead.mkdir()
    alive.mkdir()
    with metrics_dir.shared(True):
        mine = Path(os.environ[metrics_dir.ENV])
        assert mine.is_dir() and mine.parent == tmp_path
        assert not dead.exists() and alive.exists()
    assert not mine.exists()
    assert metrics_dir.ENV not in os.environ  # nothing after it counts into a directory that is gone


def test_no_directory_when_serve_starts_no_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(metrics_dir.ENV, raising=False)
    with metrics_dir.shared(False):
        assert metrics_dir.ENV not in os.environ
    assert list(tmp_path.iterdir()) == []
