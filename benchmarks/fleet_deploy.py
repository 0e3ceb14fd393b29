"""Wall time of `resnet-edge deploy` for 2, 4 and 8 JetPack 6 devices at --forks 1 and 8: the
sshd devices on loopback that `make test-deploy` uses (tests/fleet_devices.py), a first deploy
of a signed digits bundle (fp16) to fresh devices each time, measured side by side in one run.
Writes the fleet page of the 8-device run beside --out. Needs root, sshd and the deploy extra.

    .venv/bin/python benchmarks/fleet_deploy.py [--out /tmp/fleet-bench]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fleet_devices  # noqa: E402


def bundle(out: Path) -> tuple[Path, Path]:
    cli = str(Path(sys.executable).parent / "resnet-edge")
    work = out / "work"
    subprocess.run([cli, "export", str(ROOT / "tests/data/resnet20-digits.pt"), "--out", str(work)],
                   check=True, capture_output=True)
    subprocess.run([cli, "calibrate", str(work), "--samples", "64"], check=True, capture_output=True)
    subprocess.run([cli, "keygen", "--out", str(out), "--name", "ci"], check=True, capture_output=True)
    (out / "dist").mkdir()
    subprocess.run([cli, "bundle", str(work), "--target", "jetpack6", "--golden", "40", "--sign",
                    str(out / "ci.key"), "--out", str(out / "dist")], check=True, capture_output=True)
    return next((out / "dist").glob("*.tar.gz")), out / "ci.pub"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/fleet-bench"))
    args = parser.parse_args()
    why = fleet_devices.usable()
    if why:
        raise SystemExit(why)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    archive, key = bundle(args.out)
    cli = str(Path(sys.executable).parent / "resnet-edge")
    print(f"{'devices':>7}  {'forks':>5}  {'wall s':>7}  {'s/device':>8}  exit")
    for count in (2, 4, 8):
        for forks in (1, 8):
            fleet = fleet_devices.Fleet(args.out / f"fleet-{count}-{forks}")
            try:
                for index in range(count):
                    fleet.start(f"orin-{index:02d}", "jetpack6")
                inventory = fleet.inventory()
                started = time.monotonic()
                run = subprocess.run([cli, "deploy", str(archive), "-i", str(inventory), "--key", str(key),
                                      "--install-verifier", "--precisions", "fp16", "--iterations", "20",
                                      "--forks", str(forks), "--out", str(args.out / f"deployments-{count}-{forks}")],
                                     capture_output=True, text=True)
                wall = time.monotonic() - started
            finally:
                fleet.stop()
            print(f"{count:>7}  {forks:>5}  {wall:>7.1f}  {wall / count:>8.1f}  {run.returncode}", flush=True)
            if run.returncode:
                print(run.stdout[-3000:], run.stderr[-2000:])


if __name__ == "__main__":
    main()
