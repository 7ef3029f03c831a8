"""Programs taken from Debian packages without installing them: `apt-get download` and `dpkg-deb -x`.

The suite needs `promtool` (package `prometheus`) and the ingest benchmark Postfix's `smtp-source` (package
`postfix`). Installing either package would install, and start, a Prometheus server or an MTA; fetching only
the .deb and unpacking it into a cache folder gives the program alone. The cache is reused when present.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
TOOLS = PROJECT / ".tools"  # in .gitignore

_BINARY_DIRS = ("usr/bin", "usr/sbin", "bin", "sbin")


class DebianToolError(Exception):
    """A package could not be fetched or unpacked, or lacks the program; the message says why."""


@dataclass(frozen=True)
class UnpackedPackage:
    """A Debian package's files under `root` (as if `/` were `root`), and the package's version."""

    name: str
    root: Path
    version: str

    def binary(self, name: str) -> Path:
        """The program `name` from the package's bin/ or sbin/ folders."""
        for folder in _BINARY_DIRS:
            path = self.root / folder / name
            if path.is_file():
                return path
        folders = ", ".join(_BINARY_DIRS)
        raise DebianToolError(f"Debian package {self.name} {self.version} has no {name} in {folders}")


def debian_package(package: str, tools: Path = TOOLS) -> UnpackedPackage:
    """The package unpacked under `tools/<package>/`, downloaded and unpacked first when missing.

    The unpacked tree is complete once its VERSION file exists: it is unpacked beside the final folder and
    renamed into place, so an interrupted or concurrent run never leaves a half-unpacked tree that is used.
    """
    root = tools / package
    version_file = root / "VERSION"
    if not version_file.is_file():
        tools.mkdir(parents=True, exist_ok=True)
        deb = _downloaded_deb(package, tools)
        staging = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=tools))
        try:
            _run(["dpkg-deb", "-x", str(deb), str(staging)], what=f"dpkg-deb -x {deb.name}")
            version = _run(["dpkg-deb", "-f", str(deb), "Version"], what=f"dpkg-deb -f {deb.name}").strip()
            (staging / "VERSION").write_text(version + "\n")
            if root.exists() and not version_file.is_file():
                shutil.rmtree(root)  # an unfinished tree from an older layout or a killed run
            try:
                staging.rename(root)
            except OSError:
                if not version_file.is_file():  # not another run that finished first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return UnpackedPackage(package, root, version_file.read_text().strip())


def debian_binary(package: str, binary: str, tools: Path = TOOLS) -> Path:
    """The program `binary` from Debian package `package`, unpacked under `tools` (see debian_package)."""
    return debian_package(package, tools).binary(binary)


def _downloaded_deb(package: str, tools: Path) -> Path:
    """The package's .deb in `tools`: one an earlier run left, else `apt-get download` (installs nothing)."""
    debs = sorted(tools.glob(f"{package}_*.deb"))
    if not debs:
        command = ["apt-get", "download", package]
        first = subprocess.run(command, cwd=tools, capture_output=True, text=True, check=False)
        if first.returncode != 0:
            print(f"apt-get download {package} failed; running apt-get update once", file=sys.stderr)
            _run(["apt-get", "update"], what="apt-get update")
            _run(command, what=f"apt-get download {package}", cwd=tools)
        debs = sorted(tools.glob(f"{package}_*.deb"))
        if not debs:
            raise DebianToolError(f"apt-get download {package} left no {package}_*.deb in {tools}")
    return debs[-1]


def _run(command: Sequence[str], *, what: str, cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.strip() or result.stdout.strip()
        raise DebianToolError(f"{what} failed ({result.returncode}): {detail}")
    return result.stdout
