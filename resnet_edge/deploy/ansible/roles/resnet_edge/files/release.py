"""release.py: the device side of `resnet-edge deploy`, installed beside the trusted verify.py.

One subcommand per step the playbook runs on a device, each printing one JSON line:
  facts     the L4T release (so the JetPack), Python, TensorRT and free disk
  lock      take the deploy lock (a second deploy to this device is refused, never mixed)
  unlock    give it back
  check     the archive against the trusted verify.py's checks and the device's key, before
            anything is extracted
  extract   the same checks, then releases/<bundle>-<sha8>/<bundle>/ appears whole or not at all
  switch    `current` to a release, atomically (a new link renamed over the old); `previous`
            keeps the one before; releases past --keep are pruned
  rollback  `current` back to `previous`

It runs on the device's Python (3.8 and up) with the standard library and the trusted
verifier's lib/; it never writes bytecode. Exit codes: 0 done, 1 refused for a reason on this
device (a gate, a lock, a mismatched JetPack), 2 the bundle is damaged, forged or older than
--min-created, 3 something the device lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # nothing of ours appears in the trusted folder or a release
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "lib"))

import archive  # noqa: E402  (the trusted verifier's lib/)
import verify  # noqa: E402  (the trusted verify.py)

# L4T major -> JetPack family, as NVIDIA numbers them (R35: JetPack 5.x, R36: JetPack 6.x)
JETPACK_OF_L4T = {"32": "4", "34": "5", "35": "5", "36": "6"}
TARGET_JETPACK = {"jetpack5": "5", "jetpack6": "6"}


def say(**fields) -> None:
    print(json.dumps(fields, sort_keys=True))


def facts(args) -> int:
    l4t = None
    try:
        first = Path(args.l4t_file).read_text().splitlines()[0]
        # "# R35 (release), REVISION: 4.1, GCID: ..." -> "R35.4.1"
        major = first.split("R", 1)[1].split()[0]
        revision = first.split("REVISION:", 1)[1].split(",")[0].strip()
        l4t = f"R{major}.{revision}"
    except (OSError, IndexError):
        l4t = _l4t_package()
    tensorrt = None
    try:
        import tensorrt
        tensorrt = tensorrt.__version__
    except ImportError:
        pass
    root = Path(args.root)
    usage = shutil.disk_usage(root if root.exists() else root.parent)
    jetpack = JETPACK_OF_L4T.get(l4t[1:].split(".")[0]) if l4t else None
    say(l4t=l4t, jetpack=jetpack, python=platform.python_version(), tensorrt=tensorrt,
        free_bytes=usage.free, machine=platform.machine())
    if args.target in TARGET_JETPACK and jetpack != TARGET_JETPACK[args.target]:
        here = f"JetPack {jetpack} (L4T {l4t})" if jetpack else "not a Jetson (no L4T release)"
        print(f"error: the bundle targets {args.target}, and this device is {here}; deploy a "
              f"bundle made with --target {'jetpack' + jetpack if jetpack else 'x86-trt10'}",
              file=sys.stderr)
        return 1
    return 0


def _l4t_package() -> str | None:
    """L4T from the nvidia-l4t-core package ("36.4.0-20240912212859" -> R36.4.0), where the
    release file is missing."""
    import subprocess
    if shutil.which("dpkg-query") is None:
        return None
    run = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-l4t-core"],
                         capture_output=True, text=True)
    version = run.stdout.strip().split("-")[0]
    return f"R{version}" if run.returncode == 0 and version[:1].isdigit() else None


def lock(args) -> int:
    folder = Path(args.root) / ".lock"
    Path(args.root).mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()  # atomic: exactly one deploy makes it
    except FileExistsError:
        try:
            held = json.loads((folder / "owner.json").read_text())
        except (OSError, ValueError):
            held = {}
        if held.get("token") == args.token:
            return 0
        print(f"error: another deploy ({held.get('bundle', '?')}, since {held.get('since', '?')}) "
              f"holds this device; wait for it, or remove {folder} if it died", file=sys.stderr)
        return 1
    (folder / "owner.json").write_text(json.dumps({
        "token": args.token, "bundle": args.bundle,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    return 0


def unlock(args) -> int:
    folder = Path(args.root) / ".lock"
    try:
        held = json.loads((folder / "owner.json").read_text())
    except (OSError, ValueError):
        return 0
    if held.get("token") == args.token:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def checked(args, into: Path) -> "verify.Bundle":
    """The archive extracted into `into` and checked as the trusted verify.py checks a bundle:
    every file against manifest.json, the signature with the device's key, its age."""
    key = Path(args.key) if args.key else None
    min_created = archive.created_bound(args.min_created) if args.min_created else None
    folder = archive.safe_extract(Path(args.archive), into)
    return verify.Bundle(folder, key, allow_unsigned=args.allow_unsigned, min_created=min_created)


def release_name(args, bundle) -> str:
    return f"{bundle.folder.name}-{archive.sha256_file(args.archive)[:8]}"


def check(args) -> int:
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        bundle = checked(args, Path(tmp))
        say(release=release_name(args, bundle), name=bundle.folder.name,
            target=bundle.info.get("target"), precisions=bundle.info["precisions"],
            signed=bundle.signature["verified"], key_id=bundle.signature["key_id"],
            manifest_sha256=bundle.manifest_sha256)
    return 0


def extract(args) -> int:
    """releases/<bundle>-<sha8>/<bundle>/: the bundle keeps its own name (its signed identity),
    and its device folder (engines, verify.json) is <bundle>.device beside it in the release."""
    releases = Path(args.root) / "releases"
    releases.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=releases, prefix=".incoming-"))
    try:
        bundle = checked(args, staging)
        name = release_name(args, bundle)
        final = releases / name
        if final.is_dir():  # the same archive, extracted whole before: keep it and its engines
            archive.check_folder(final / bundle.folder.name)
            say(release=name, path=str(final), changed=False)
            return 0
        os.rename(staging, final)  # whole or not at all: one rename within releases/
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(release=name, path=str(final), changed=True)
    return 0


def _link(root: Path, name: str, target: str) -> None:
    """root/name -> target, replacing whatever link was there in one rename."""
    temporary = root / f".{name}.{os.getpid()}"
    if temporary.is_symlink():
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, root / name)


def _target(root: Path, name: str) -> str | None:
    link = root / name
    return os.readlink(link) if link.is_symlink() else None


def switch(args) -> int:
    root = Path(args.root)
    wanted = f"releases/{args.release}"
    if not (root / wanted).is_dir():
        print(f"error: {root / wanted} is not an extracted release", file=sys.stderr)
        return 1
    before = _target(root, "current")
    if before == wanted:
        say(current=wanted, previous=_target(root, "previous"), changed=False, pruned=[])
        return 0
    if before is not None:
        _link(root, "previous", before)
    _link(root, "current", wanted)
    keep = {wanted, before} - {None}
    pruned = []
    releases = sorted((p for p in (root / "releases").iterdir()
                       if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)
    for old in releases:
        if f"releases/{old.name}" in keep:
            continue
        if len(keep) < args.keep:
            keep.add(f"releases/{old.name}")
            continue
        shutil.rmtree(old, ignore_errors=True)  # the bundle and its device folder with it
        pruned.append(old.name)
    say(current=wanted, previous=before, changed=True, pruned=pruned)
    return 0


def rollback(args) -> int:
    root = Path(args.root)
    current, previous = _target(root, "current"), _target(root, "previous")
    if previous is None or not (root / previous).is_dir():
        print(f"error: no previous release on this device to roll back to (current: {current})",
              file=sys.stderr)
        return 1
    _link(root, "current", previous)
    if current is not None:
        _link(root, "previous", current)
    say(current=previous, previous=current, changed=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="release.py", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["facts", "lock", "unlock", "check", "extract", "switch",
                                            "rollback"])
    parser.add_argument("--root", required=True, help="the deploy folder on this device")
    parser.add_argument("--archive")
    parser.add_argument("--key")
    parser.add_argument("--allow-unsigned", action="store_true")
    parser.add_argument("--min-created")
    parser.add_argument("--target", help="facts: refuse a bundle for another JetPack")
    parser.add_argument("--l4t-file", default="/etc/nv_tegra_release")
    parser.add_argument("--release")
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--token")
    parser.add_argument("--bundle")
    args = parser.parse_args(argv)
    try:
        return globals()[args.command](args)
    except archive.BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 3 if exc.errno == 28 else 1  # ENOSPC: the device lacks room


if __name__ == "__main__":
    raise SystemExit(main())
