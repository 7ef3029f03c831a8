"""The systemd units in deploy/systemd: each service's sandbox rates at most 2.0 ("OK") in
`systemd-analyze security`, and `systemd-analyze verify` has nothing to say about any unit.

`verify` checks that ExecStart= is an executable file, and the units name the installed path
(/opt/postkasse/.venv/bin/postkasse), which a checkout or CI machine lacks. So verify runs with `--root` on a
throw-away tree holding: a fake executable at that path, a copy of the host's own units (sysinit.target,
timers.target, ... which every unit depends on by default) and ours in /etc/systemd/system, loaded by name as
an installed unit is. `--generators=no` keeps the host's generators out, `--man=no` does not look for man
pages. A clean unit: exit status 0 and no output at all (verify exits 0 on warnings such as an unknown key or
a bad value, printing them to stderr, so the output is what is checked).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
UNITS = sorted(p for p in UNITS_DIR.iterdir() if p.suffix in {".service", ".timer"})
SERVICES = [p for p in UNITS if p.suffix == ".service"]
DROP_INS = sorted(UNITS_DIR.glob("*.service.d/*.conf.example"))
EXECUTABLE = "/opt/postkasse/.venv/bin/postkasse"
HOST_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 2.0
OVERALL = re.compile(r"Overall exposure level for (?P<unit>\S+): (?P<score>\d+\.\d+) (?P<verdict>\w+)")

ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt install systemd)"
)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, "--no-pager", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_COLORS": "0"},
        check=False,
    )


def test_the_units_are_there() -> None:
    names = {p.name for p in UNITS}
    assert {
        "postkasse.service",
        "postkasse-worker.service",
        "postkasse-purge.service",
        "postkasse-purge.timer",
        "postkasse-backup.service",
        "postkasse-backup.timer",
    } <= names


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_service_sandbox_rates_ok(unit: Path) -> None:
    # --threshold is the overall exposure times 10: exit status 1 above 2.0.
    result = analyze("security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit))
    found = OVERALL.search(result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert found["unit"] == unit.name
    score = float(found["score"])
    assert score <= MAX_EXPOSURE, f"{unit.name}: exposure {score}\n{result.stdout}"
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A filesystem root as the units expect it installed (see the module's docstring)."""
    if not HOST_UNITS.is_dir():
        pytest.skip(f"{HOST_UNITS} is missing: verify needs the standard targets")
    top = tmp_path_factory.mktemp("root")
    exe = top / EXECUTABLE.lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    shutil.copytree(HOST_UNITS, top / "usr/lib/systemd/system", symlinks=True)
    system = top / "etc/systemd/system"
    system.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, system / unit.name)
    return top


def verify(root: Path, unit: str) -> None:
    result = analyze("verify", "--man=no", "--generators=no", f"--root={root}", unit)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, f"{unit}: exit {result.returncode}\n{output}"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies_clean(root: Path, unit: Path) -> None:
    verify(root, unit.name)


def test_verify_catches_a_bad_unit(root: Path) -> None:
    """The check above would see what verify only warns about."""
    bad = root / "etc/systemd/system/postkasse-bad.service"
    bad.write_text(f"[Service]\nExecStart={EXECUTABLE} serve\nProtectSytem=strict\n")
    try:
        with pytest.raises(AssertionError, match="Unknown key"):
            verify(root, bad.name)
    finally:
        bad.unlink()


@pytest.mark.parametrize("drop_in", DROP_INS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_drop_in_example_verifies_clean(root: Path, drop_in: Path) -> None:
    unit = drop_in.parent.name.removesuffix(".d")
    target = root / "etc/systemd/system" / drop_in.parent.name / drop_in.name.removesuffix(".example")
    target.parent.mkdir(exist_ok=True)
    shutil.copy(drop_in, target)
    try:
        verify(root, unit)
    finally:
        target.unlink()


def test_timers_start_their_service() -> None:
    for timer in (p for p in UNITS if p.suffix == ".timer"):
        service = timer.with_suffix(".service")
        assert service.exists(), f"{timer.name} has no {service.name}"
        assert f"Unit={service.name}" in timer.read_text().splitlines()
        assert "Type=oneshot" in service.read_text().splitlines()
