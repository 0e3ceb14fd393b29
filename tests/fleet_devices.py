"""Jetsons on loopback for `resnet-edge deploy`: each "device" is Debian's real sshd on
127.0.0.1 at a port of its own, started in a mount namespace of its own whose /etc is an overlay
holding that JetPack's /etc/nv_tegra_release (R35 for JetPack 5, R36 for JetPack 6), with the
device's python3 first on its PATH: the JetPack floor's venv (tests/device_pythons.py) with the
TensorRT stand-in of that release where JetPack keeps TensorRT. Every device logs in as the
user running the tests, with a deploy folder of its own (inventory variable resnet_edge_root).

Needs root (the mount namespace and overlay), /usr/sbin/sshd (Debian's openssh-server: `make
test-deploy` installs it) and ansible-core; a test skips with the reason where one is missing.
Nothing listens anywhere but 127.0.0.1, and every sshd is stopped when its test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import device_pythons as floors
from trt_standin import write_site

SSHD = "/usr/sbin/sshd"
RELEASES = {  # family: (floor, TensorRT, cuda-python, the first line of nv_tegra_release)
    "jetpack5": (floors.JETPACK5, "8.5.3", "11.8.0", "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64"),
    "jetpack6": (floors.JETPACK6, "10.3.0", "12.6.1", "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64"),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def usable() -> str | None:
    """Why devices cannot be started here, or None."""
    if os.geteuid() != 0:
        return "needs root for each device's mount namespace"
    if not os.path.exists(SSHD):
        return "needs Debian's openssh-server (make test-deploy installs it)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    try:
        import ansible  # noqa: F401
    except ImportError:
        return "needs ansible-core (the deploy extra)"
    return None


@dataclass
class Device:
    name: str
    family: str
    port: int
    root: Path  # its deploy folder
    python: Path
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)


class Fleet:
    """Devices started on demand, an SSH key to log in with, known_hosts, and an inventory."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.devices: list[Device] = []
        folder.mkdir(parents=True, exist_ok=True)
        self.key = folder / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text("")

    def start(self, name: str, family: str, *, answers: bool = True, trust: bool = True,
              root: Path | None = None) -> Device:
        """A device of `family`; `answers`: its TensorRT stand-in answers the golden inputs as the
        model would (off: every gate fails); `trust`: its host key is in known_hosts; `root`: its
        deploy folder (a filesystem the test mounted before the device starts sees it)."""
        floor, tensorrt, cuda_python, l4t = RELEASES[family]
        python = floors.venv(floor)
        home = self.folder / name
        (home / "bin").mkdir(parents=True)
        site = write_site(home / "site", tensorrt, cuda_python=cuda_python, answers=answers)
        # the device's python3: the floor's interpreter, with JetPack's TensorRT on its path
        wrapper = home / "bin" / "python3"
        wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{python}" "$@"\n')
        wrapper.chmod(0o755)
        for part in ("etc-upper", "etc-work", "home-upper", "home-work"):
            (home / part).mkdir()
        (home / "etc-upper" / "nv_tegra_release").write_text(l4t + "\n")
        # a device's own login files: none of this machine's (pyenv's shims first on PATH)
        for dotfile in (".bashrc", ".profile", ".bash_profile", ".bash_login"):
            (home / "home-upper" / dotfile).write_text("")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / "host_key")], check=True)
        port = free_port()
        (home / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
            f"PidFile {home / 'sshd.pid'}\nAuthorizedKeysFile {self.folder / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
            f"SetEnv PATH={home / 'bin'}:/usr/bin:/bin LANG=C.UTF-8\n")
        (self.folder / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        Path("/run/sshd").mkdir(exist_ok=True)
        login = Path.home()
        etc = f"lowerdir=/etc,upperdir={home / 'etc-upper'},workdir={home / 'etc-work'}"
        dotfiles = f"lowerdir={login},upperdir={home / 'home-upper'},workdir={home / 'home-work'}"
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t overlay overlay -o "$1" /etc && mount -t overlay overlay -o "$2" "$3" '
             '&& exec "$4" -D -e -f "$5"', "device", etc, dotfiles, str(login), SSHD,
             str(home / "sshd_config")],
            stdout=subprocess.DEVNULL, stderr=open(home / "sshd.log", "w"), start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None:
                    break
                time.sleep(0.05)
        else:
            process.kill()
            raise RuntimeError(f"sshd for {name} did not start: {(home / 'sshd.log').read_text()}")
        if process.poll() is not None:
            raise RuntimeError(f"sshd for {name} exited: {(home / 'sshd.log').read_text()}")
        if trust:
            host_key = (home / "host_key.pub").read_text().split()
            with open(self.known_hosts, "a") as known:
                known.write(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        device = Device(name, family, port, root or home / "deploy", wrapper, process)
        self.devices.append(device)
        return device

    def inventory(self, devices=None, extra_hosts: dict | None = None, names: dict | None = None) -> Path:
        """hosts.yml with a group per JetPack family, as README's example has it; `names` gives a
        device another inventory name."""
        import yaml
        groups: dict = {}
        for device in devices if devices is not None else self.devices:
            name = (names or {}).get(device.name, device.name)
            groups.setdefault(device.family, {"hosts": {}})["hosts"][name] = {
                "ansible_host": "127.0.0.1", "ansible_port": device.port,
                "ansible_python_interpreter": str(device.python), "resnet_edge_root": str(device.root)}
        for name, values in (extra_hosts or {}).items():
            groups.setdefault("others", {"hosts": {}})["hosts"][name] = values
        inventory = {"all": {"vars": {
            "ansible_user": os.environ.get("USER") or "root",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={self.known_hosts} -o ConnectTimeout=5"},
            "children": groups}}
        path = self.folder / f"hosts-{len(list(self.folder.glob('hosts-*')))}.yml"
        path.write_text(yaml.safe_dump(inventory))
        return path

    def stop(self) -> None:
        for device in self.devices:
            device.stop()


@pytest.fixture
def fleet(tmp_path):
    why = usable()
    if why:
        pytest.skip(why)
    devices = Fleet(tmp_path / "fleet")
    yield devices
    devices.stop()
