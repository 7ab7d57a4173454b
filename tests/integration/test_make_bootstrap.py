"""The README's commands from an activated virtualenv and on a PEP 668 Python: the Makefile's own uv bootstrap.

Each test runs the real Makefile (`make install`, `make uv`) in a child process whose PATH and VIRTUAL_ENV are
those of an activated virtualenv (or of a plain shell with an externally managed `python3`), with no `uv`
anywhere on PATH and a temporary HOME and XDG_CACHE_HOME, so the bootstrap starts from nothing.

The uv wheel comes from a wheel cache outside the clone (~/.cache/fedsec/test-wheels/uv-<version>/), downloaded
from PyPI once with pip and then handed to the Makefile's `pip install uv==<version>` through pip's own
PIP_NO_INDEX/PIP_FIND_LINKS: the recipe is unchanged, the network is needed only the first time, and a run
stays in seconds. uv's package cache is the user's real one (UV_CACHE_DIR): the project's .venv is already
synced, so `uv sync` has nothing to download either way.

The PEP 668 Python is a copy of this machine's base interpreter in a prefix of its own: its binary copied,
its standard library linked entry by entry, and an EXTERNALLY-MANAGED file in that prefix's stdlib directory,
which is exactly where PEP 668 puts the marker and where pip looks for it. Marking the real interpreter would
change the machine for everyone; the copy is that interpreter, marked, and pip refuses `--user` installs
with it just as it does with a distribution's Python (the test checks that first).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = ROOT / "Makefile"
VENV = ROOT / ".venv"
UV_VERSION = re.search(r"^UV_VERSION := (\S+)$", MAKEFILE.read_text(), re.M)[1]  # type: ignore[index]
# The interpreter behind the test's own venv: what the Makefile must build its private uv venv from.
BASE_PYTHON = Path(getattr(sys, "_base_executable", sys.executable))
# What the old bootstrap (`python3 -m uv`, `pip install --user uv`) printed, and what uv prints when
# VIRTUAL_ENV names another environment than the project's.
BAD_OUTPUT = ("No module named uv", "does not match the project environment", "externally-managed-environment")


def run(argv: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def project_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]  # type: ignore[index]


@pytest.fixture(scope="session")
def uv_wheels() -> Path:
    """A directory holding the pinned uv wheel for this platform (downloaded once, kept outside the clone)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedsec" / "test-wheels" / f"uv-{UV_VERSION}"
    if not list(cache.glob(f"uv-{UV_VERSION}-*.whl")):
        cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([str(BASE_PYTHON), "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary",
                            ":all:", "-d", str(cache), f"uv=={UV_VERSION}"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"could not download uv=={UV_VERSION} from PyPI once into {cache}:\n{r.stderr}"
    return cache


def system_path() -> list[str]:
    """This process's PATH without any virtualenv's bin and without every directory that holds a `uv`."""
    dirs = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not d or (Path(d) / "uv").exists() or (Path(d).parent / "pyvenv.cfg").exists():
            continue
        dirs.append(d)
    assert shutil.which("make", path=os.pathsep.join(dirs)), f"no `make` on {dirs}"
    return dirs


def child_env(tmp_path: Path, uv_wheels: Path, path: list[str], virtual_env: Path | None) -> dict[str, str]:
    # Nothing of the parent's make (command-line overrides travel in MAKEFLAGS), pip, uv or venv settings.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MAKE", "MFLAGS", "PIP_", "UV_", "VIRTUAL_ENV", "PYTHON"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PATH=os.pathsep.join(path),
               PIP_NO_INDEX="1", PIP_FIND_LINKS=str(uv_wheels), PIP_DISABLE_PIP_VERSION_CHECK="1",
               UV_CACHE_DIR=str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uv"))
    if virtual_env is not None:
        env["VIRTUAL_ENV"] = str(virtual_env)
    assert shutil.which("uv", path=env["PATH"]) is None
    return env


def private_uv(env: dict[str, str]) -> Path:
    return Path(env["XDG_CACHE_HOME"]) / "fedsec" / f"uv-{UV_VERSION}"


def venv_home(venv: Path) -> Path:
    cfg = dict(line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines() if " = " in line)
    return Path(cfg["home"])


@pytest.mark.parametrize("activated", ["the project's .venv", "another virtualenv"])
def test_make_install_from_an_activated_virtualenv_bootstraps_uv_and_syncs_the_project_venv(
        tmp_path: Path, uv_wheels: Path, activated: str) -> None:
    if activated == "another virtualenv":
        other = tmp_path / "other-venv"
        subprocess.run([str(BASE_PYTHON), "-m", "venv", "--without-pip", str(other)], check=True, timeout=120)
        venv = other
    else:
        venv = VENV
    env = child_env(tmp_path, uv_wheels, [str(venv / "bin"), *system_path()], venv)
    # What broke before: `python3` is the activated venv's, which has no uv module.
    old = run(["python3", "-m", "uv", "--version"], env)
    assert old.returncode != 0 and "No module named uv" in old.stderr, old

    # -W uv.lock: as if the lock had just changed, so the install recipe runs (uv sync, then uv run).
    r = run(["make", "-W", "uv.lock", "install"], env, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert f"no uv on PATH: installing uv {UV_VERSION} into {private_uv(env)}" in r.stderr, out
    assert not [b for b in BAD_OUTPUT if b in out], out
    # uv sync and uv run used this clone's .venv, whatever VIRTUAL_ENV said.
    assert f"fedsec {project_version()} installed in {VENV}" in r.stdout, out

    uv = private_uv(env) / "bin" / "uv"
    assert run([str(uv), "--version"], env).stdout.split()[:2] == ["uv", UV_VERSION]
    # Built from the base interpreter, not from whichever venv was active (which may be removed or rebuilt).
    assert venv_home(private_uv(env)).resolve() == BASE_PYTHON.parent.resolve()
    if activated == "another virtualenv":
        assert not list(venv.glob("lib/python*/site-packages/fedsec*")), "uv installed into the activated venv"

    # A second run reuses the private uv.
    again = run(["make", "uv"], env)
    assert again.returncode == 0 and "installing uv" not in again.stderr, again
    assert again.stdout.split()[:2] == ["uv", UV_VERSION], again


def externally_managed_python(prefix: Path) -> Path:
    """The base interpreter, copied into `prefix` and marked EXTERNALLY-MANAGED (PEP 668) there."""
    stdlib = Path(sysconfig.get_path("stdlib"))  # the base interpreter's, even from inside a venv
    (prefix / "bin").mkdir(parents=True)
    lib = prefix / "lib" / stdlib.name
    lib.mkdir(parents=True)
    exe = prefix / "bin" / BASE_PYTHON.name
    shutil.copy2(BASE_PYTHON.resolve(), exe)
    (prefix / "bin" / "python3").symlink_to(exe.name)
    for entry in stdlib.iterdir():
        if entry.name != "EXTERNALLY-MANAGED":
            (lib / entry.name).symlink_to(entry)
    (lib / "EXTERNALLY-MANAGED").write_text(
        "[externally-managed]\nError=This Python is managed by the test's pretend distribution.\n")
    return prefix / "bin" / "python3"


def test_make_uv_on_a_pep_668_python_installs_uv_into_a_virtualenv_of_its_own(
        tmp_path: Path, uv_wheels: Path) -> None:
    python = externally_managed_python(tmp_path / "distro-python")
    env = child_env(tmp_path, uv_wheels, [str(python.parent), *system_path()], None)
    found = run(["python3", "-c", "import sys, sysconfig; print(sys.prefix); print(sysconfig.get_path('stdlib'))"], env)
    prefix = python.parent.parent
    assert found.stdout.split() == [str(prefix), str(prefix / "lib" / Path(sysconfig.get_path("stdlib")).name)]
    # The old bootstrap, refused as on Debian or Ubuntu.
    old = run(["python3", "-m", "pip", "install", "--user", f"uv=={UV_VERSION}"], env)
    assert old.returncode != 0 and "externally-managed-environment" in old.stderr, old

    r = run(["make", "uv"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split()[:2] == ["uv", UV_VERSION], r.stdout
    assert venv_home(private_uv(env)) == python.parent
    # Nothing went into the marked interpreter's own site or the user site.
    assert not list((Path(env["HOME"]) / ".local").glob("**/uv*"))
