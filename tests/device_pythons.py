"""Pythons as a Jetson has them, for running a bundle the way a device runs it.

A JetPack image runs verify.py and build_engine.sh with its own Python and the libraries apt
gives it, with bytecode on: JetPack 5.1 (Ubuntu 20.04) has Python 3.8, numpy 1.17.4 and
python3-cryptography 2.8; JetPack 6 (Ubuntu 22.04) has Python 3.10, numpy 1.21.5 and
cryptography 3.4.8. Here they are venvs made from pyenv's 3.8 and 3.10 with exactly those
releases from PyPI, made once per machine under ~/.cache (or $RESNET_EDGE_TEST_CACHE) and
reused; a test skips, with the reason, where pyenv lacks that Python or pip cannot install a
floor (aarch64 has no numpy 1.17.4 wheel).

ONNX Runtime's fallback runs in its own venvs: the oldest release the Jetson wheels cover (1.16)
needs numpy 1.21.6 or newer, so those have 1.21.6, the nearest release it takes. Each venv holds
exactly the distributions named (installed without their dependencies, by the test run's pip):
what verify.py and lib/ import, and nothing that could hide a missing import.

`device_env` is the environment of a login on the device: PATH with that Python's bin first,
then /usr/bin:/bin, and nothing else inherited from the test run except HOME, TMPDIR and the
OpenBLAS settings this machine needs (old OpenBLAS builds crash on some of its CPUs). Dropped on
purpose, since each hides how a device behaves: PYTHONDONTWRITEBYTECODE (set on the machines
the tests run on; a device writes bytecode), PYTHONPYCACHEPREFIX (moves bytecode out of the
bundle), PYTHONPATH, PYTHONSAFEPATH, PYTHONWARNINGS, VIRTUAL_ENV, OMP_NUM_THREADS and every
RESNET_EDGE_* variable (conftest pins RESNET_EDGE_DEVICE=cpu for the suite).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("RESNET_EDGE_TEST_CACHE") or Path.home() / ".cache" / "resnet-edge-tests")
KEPT = ("HOME", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass(frozen=True)
class Floor:
    name: str
    python: str  # major.minor, from pyenv
    packages: tuple[str, ...]

    def key(self) -> str:
        return hashlib.sha256(json.dumps([self.python, self.packages]).encode()).hexdigest()[:12]


CRYPTOGRAPHY_2_8 = ("cryptography==2.8", "cffi", "pycparser", "six")  # 2.8 still imports six
CRYPTOGRAPHY_3_4 = ("cryptography==3.4.8", "cffi", "pycparser")
JETPACK5 = Floor("jetpack5", "3.8", ("numpy==1.17.4", *CRYPTOGRAPHY_2_8))
JETPACK6 = Floor("jetpack6", "3.10", ("numpy==1.21.5", *CRYPTOGRAPHY_3_4))
JETPACK5_ORT = Floor("jetpack5-ort", "3.8", ("numpy==1.21.6", "onnxruntime==1.16.3", *CRYPTOGRAPHY_2_8))
JETPACK6_ORT = Floor("jetpack6-ort", "3.10", ("numpy==1.21.6", "onnxruntime==1.16.3", *CRYPTOGRAPHY_3_4))


def find_python(version: str) -> str | None:
    """pyenv's interpreter for `version` (3.8, 3.10), or one on PATH."""
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    found = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    if found:
        return found[-1]
    on_path = shutil.which(f"python{version}")
    if on_path and "shims" not in on_path:
        return on_path
    return None


def venv(floor: Floor) -> Path:
    """The venv for `floor` (its bin/python), made once per machine; skips the test with the
    reason where it cannot be made. Made under a lock (test workers ask at once) and marked
    complete last, so a killed run is made again."""
    python = find_python(floor.python)
    if python is None:
        pytest.skip(f"needs Python {floor.python} (pyenv install {floor.python}) for the "
                    f"{floor.name} device floor")
    where = CACHE / f"{floor.name}-{floor.key()}"
    done = where / ".complete"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{floor.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(where, ignore_errors=True)
            made = subprocess.run([python, "-m", "venv", "--without-pip", str(where)],
                                  capture_output=True, text=True)
            if made.returncode == 0:
                made = subprocess.run([sys.executable, "-m", "pip", "--python", str(where / "bin" / "python"),
                                       "install", "-q", "--disable-pip-version-check", "--no-deps",
                                       "--only-binary=:all:", *floor.packages],
                                      capture_output=True, text=True)
            if made.returncode != 0:
                shutil.rmtree(where, ignore_errors=True)
                said = (made.stderr.strip().splitlines() or ["no output"])[-1]
                pytest.skip(f"cannot make the {floor.name} floor ({', '.join(floor.packages)}): {said}")
            done.write_text(json.dumps(floor.packages))
    return where / "bin" / "python"


def device_env(python: Path, pythonpath: Path | None = None, **extra: str) -> dict:
    """A device login's environment with `python`'s bin first on PATH (see the module text)."""
    env = {name: os.environ[name] for name in KEPT if name in os.environ}
    env.update(PATH=f"{Path(python).parent}:/usr/bin:/bin", LANG="C.UTF-8")
    if pythonpath is not None:  # where a device keeps TensorRT: here the stand-in's site
        env["PYTHONPATH"] = str(pythonpath)
    env.update(extra)
    return env
