"""Bundle archives and manifests, trusting nothing that comes from the archive.

A bundle is one folder: manifest.json (sha256 and size of every other file), an optional
manifest.sig (Ed25519, see signing.py), and the files the manifest lists; nothing else, no links,
no special files. The archive stores manifest.json first, so extraction reads it before anything
is written and then writes only the files it lists, each by its own name, never through a link,
hashing and counting while it streams, within a total size and a compression ratio limit.

Standard library only: the bundle carries this file in lib/ so verify.py on a device checks
bundles exactly as `resnet-edge verify` does. Over 400 lines for the same reason: one file a
device loads, holding every archive check in one place.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import stat
import tarfile
from pathlib import Path, PurePosixPath

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MANIFEST_SCHEMA = "resnet-edge.manifest/1"
MAX_TOTAL_BYTES = 8 << 30  # everything the bundle unpacks to
MAX_FILES = 10_000
MAX_MANIFEST_BYTES = 16 << 20
MAX_SIGNATURE_BYTES = 64 << 10
MAX_RATIO = 200  # uncompressed / compressed, checked once past RATIO_FLOOR
RATIO_FLOOR = 64 << 20
CHUNK = 1 << 20


class BundleError(Exception):
    """The bundle is damaged, forged or unusable; exit `code` (2 bad input, 3 missing dependency)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def check_relpath(name: str, what: str = "path") -> str:
    """A bundle-relative POSIX path that cannot leave the bundle, or BundleError."""
    if not isinstance(name, str) or not name or len(name) > 1024 or "\x00" in name or "\\" in name:
        raise BundleError(f"{what} {name!r} is not a plain relative path; refusing the bundle")
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise BundleError(f"{what} {name!r} points outside the bundle; refusing the bundle")
    return str(path)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


IDENTITY = "bundle"  # manifest.json's record of the bundle itself, signed with the files
# a name that configs, shell lines and folder names carry as it is
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_CREATED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")  # [0-9]: \d takes other scripts


def read_identity(manifest: dict) -> dict | None:
    """What the bundle says it is: {"name", "target", "release", "created"}, checked; None for
    bundles made before bundles named themselves."""
    identity = manifest.get(IDENTITY)
    if identity is None:
        return None
    if not (isinstance(identity, dict) and set(identity) == {"name", "target", "release", "created"}
            and isinstance(identity["name"], str) and PLAIN_NAME.fullmatch(identity["name"])
            and isinstance(identity["target"], str) and PLAIN_NAME.fullmatch(identity["target"])
            and (identity["release"] is None or (isinstance(identity["release"], str)
                                                 and PLAIN_NAME.fullmatch(identity["release"])))
            and real_time(identity["created"])):
        raise BundleError(f"{MANIFEST} has a malformed '{IDENTITY}' record; the bundle is damaged "
                          "or forged")
    return identity


def created_bound(text: str) -> str:
    """--min-created as the bundle's own time format: YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, a
    real calendar time (2026-02-30 is refused, not compared as text); the empty string of an
    unset CI variable is refused too, since taking it as "no bound" would turn replay
    protection off unseen."""
    bound = f"{text}T00:00:00Z" if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text or "") else text
    if not real_time(bound):
        raise BundleError(f"--min-created {text!r} is not a date (YYYY-MM-DD) or a UTC time "
                          "(YYYY-MM-DDTHH:MM:SSZ)")
    return bound


def real_time(text) -> bool:
    """Whether `text` is a bundle time (YYYY-MM-DDTHH:MM:SSZ) that names a real moment, year 1 on."""
    if not isinstance(text, str) or not _CREATED.fullmatch(text):
        return False
    try:
        datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    return True


def parse_manifest(data: bytes) -> dict:
    """manifest.json's bytes -> {"files": {path: {"sha256", "bytes"}}}, validated."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{MANIFEST} is not JSON ({exc}); the bundle is damaged") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{MANIFEST} lists no files; it is not a resnet-edge bundle manifest")
    if len(files) > MAX_FILES:
        raise BundleError(f"{MANIFEST} lists {len(files)} files (limit {MAX_FILES}); refusing it")
    total = 0
    for name, entry in files.items():
        check_relpath(name, f"{MANIFEST} entry")
        if name in (MANIFEST, SIGNATURE):
            raise BundleError(f"{MANIFEST} lists {name}, which cannot vouch for itself")
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or len(entry["sha256"]) != 64 or not isinstance(entry.get("bytes"), int)
                or isinstance(entry["bytes"], bool) or entry["bytes"] < 0):
            raise BundleError(f"{MANIFEST} entry {name!r} needs a sha256 and a byte count")
        total += entry["bytes"]
    if total > MAX_TOTAL_BYTES:
        raise BundleError(f"{MANIFEST} declares {total >> 20} MiB of files (limit "
                          f"{MAX_TOTAL_BYTES >> 30} GiB); refusing it")
    read_identity(manifest)
    names = set(files)
    for name in names:  # a file cannot also be a folder of another listed file
        for parent in PurePosixPath(name).parents:
            if str(parent) in names:
                raise BundleError(f"{MANIFEST} lists {parent} both as a file and as a folder")
    return manifest


def manifest_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archive_root(path: Path) -> Path:
    """A bundle archive's path without .tar.gz or .tgz: the name of the folder it holds."""
    path = Path(path)
    for suffix in (".tar.gz", ".tgz"):
        if path.name.endswith(suffix):
            return path.with_name(path.name[:-len(suffix)])
    return path


# ---- an extracted bundle ----------------------------------------------------------------------

def check_folder(bundle: Path) -> tuple[dict, bytes, list[str]]:
    """Every file in `bundle` is a regular file listed in manifest.json with its sha256 and
    size, and every listed file is there; no links, no special files, nothing unlisted but the
    engines nvinfer writes beside a DeepStream bundle's ONNX. Returns (manifest, manifest.json's
    bytes, those engines: what nvinfer loads next start, which no signature covers)."""
    bundle = Path(bundle)
    manifest_path = bundle / MANIFEST
    if not manifest_path.is_file() or manifest_path.is_symlink():
        raise BundleError(f"{bundle} has no {MANIFEST}; it is not a resnet-edge bundle "
                          "(give the bundle's .tar.gz or its extracted folder)")
    data = _read_small(manifest_path, MAX_MANIFEST_BYTES, MANIFEST)
    manifest = parse_manifest(data)
    files = manifest["files"]
    engines = []
    for root, dirs, names in os.walk(bundle, followlinks=False):
        for entry in [*dirs, *names]:
            path = Path(root) / entry
            rel = path.relative_to(bundle).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"bundle entry {rel} is a link; bundles hold regular files only")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise BundleError(f"bundle entry {rel} is a special file; refusing the bundle")
            if rel in files or rel in (MANIFEST, SIGNATURE):
                continue
            if not _nvinfer_engine(rel, files):
                raise BundleError(f"bundle file {rel} is not in {MANIFEST}; remove it or re-copy "
                                  "the bundle")
            engines.append(rel)
    for name, entry in sorted(files.items()):
        path = bundle / name
        if not path.is_file() or path.is_symlink():
            raise BundleError(f"bundle file {name} is missing; re-copy the bundle")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise BundleError(f"bundle file {name} does not match its sha256 in {MANIFEST} "
                              "(damaged or modified); re-copy the bundle")
    return manifest, data, sorted(engines)


# nvinfer, building an engine itself, writes <onnx-file>_b<batch>_<gpuN|dlaN>_<mode>.engine
# beside the ONNX (DeepStream nvdsinfer_model_builder.cpp; mode "best" from 7.0), and a DeepStream
# bundle's configs load it from there (build_engine.sh puts its engine there too): the device's
# own file, made from a listed model, never read as part of the bundle.
NVINFER_ENGINE = re.compile(r"(?P<onnx>[A-Za-z0-9_.-]+\.onnx)_b[0-9]{1,4}_(?:gpu|dla)[0-9]{1,2}_(?:fp32|fp16|int8|best)\.engine")


def _nvinfer_engine(rel: str, files: dict) -> bool:
    match = NVINFER_ENGINE.fullmatch(rel)
    return bool(match and match["onnx"] in files and any(n.startswith("deepstream/") for n in files))


def _read_small(path: Path, limit: int, what: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{what} is larger than {limit >> 10} KiB; refusing it")
    return data


# ---- the archive ------------------------------------------------------------------------------

class _Counting:
    """The compressed bytes read so far, for the compression-ratio limit."""

    def __init__(self, raw):
        self.raw, self.count = raw, 0

    def read(self, size=-1):
        data = self.raw.read(size)
        self.count += len(data)
        return data


class _Limits:
    def __init__(self, archive: Path, counting: _Counting, max_bytes: int, max_ratio: float):
        self.archive, self.counting = archive, counting
        self.max_bytes, self.max_ratio = max_bytes, max_ratio
        self.unpacked = 0

    def add(self, nbytes: int) -> None:
        self.unpacked += nbytes
        if self.unpacked > self.max_bytes:
            raise BundleError(f"{self.archive.name} unpacks to more than {self.max_bytes >> 20} MiB; "
                              "refusing it")
        if (self.unpacked > RATIO_FLOOR
                and self.unpacked > self.max_ratio * max(self.counting.count, 1)):
            raise BundleError(f"{self.archive.name} expands more than {self.max_ratio:.0f}x "
                              "(a decompression bomb?); refusing it")


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, *,
                 max_bytes: int = MAX_TOTAL_BYTES, max_ratio: float = MAX_RATIO) -> Path:
    """Extract a bundle archive into a new folder under `dest` and return it.

    Refuses, before writing anything it cannot vouch for: links and special members, names that
    leave the bundle, more than one top-level folder, an archive whose first file is not
    manifest.json, members the manifest does not list (and listed files the archive lacks),
    sizes or hashes that differ from the manifest, and archives that unpack past `max_bytes` or
    expand more than `max_ratio` times. On any refusal the partial folder is removed.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        raw = open(archive, "rb")
    except OSError as exc:
        raise BundleError(f"cannot read {archive}: {exc.strerror}") from None
    created: list[Path] = []
    try:
        with raw:
            counting = _Counting(raw)
            limits = _Limits(archive, counting, max_bytes, max_ratio)
            try:
                with tarfile.open(fileobj=counting, mode="r|*") as tar:
                    return _extract_stream(archive, tar, dest, limits, created)
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                raise BundleError(f"{archive.name} is truncated or not a readable tar archive "
                                  f"({_short(exc)})") from None
    except BundleError:
        for folder in created:  # what this call made, never anything that was there before
            _remove_tree(folder)
        raise


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:120] if text else type(exc).__name__)


def _extract_stream(archive: Path, tar: tarfile.TarFile, dest: Path, limits: _Limits,
                    created: list[Path]) -> Path:
    root = None
    manifest = None
    root_fd = None
    seen: set[str] = set()
    written: set[str] = set()  # listed files extracted and checked: what a second copy may name
    count = 0
    try:
        for member in tar:
            count += 1
            if count > MAX_FILES + 64:
                raise BundleError(f"{archive.name} has more than {MAX_FILES} members; refusing it")
            name = check_relpath(member.name.rstrip("/") if member.isdir() else member.name,
                                 f"{archive.name} member")
            if member.issym():
                raise BundleError(f"{archive.name} member {name!r} is a link; bundles hold regular "
                                  "files only")
            if not (member.isdir() or member.isreg() or member.islnk()) or member.issparse():
                raise BundleError(f"{archive.name} member {name!r} is a special file; refusing "
                                  "the archive")
            top, _, rel = name.partition("/")
            if root is None:
                root = top
            elif top != root:
                raise BundleError(f"{archive.name} should hold one bundle folder, found {root!r} "
                                  f"and {top!r}")
            if member.isdir():
                continue
            if member.size > limits.max_bytes:
                raise BundleError(f"{archive.name} member {name!r} declares {member.size >> 20} MiB; "
                                  "refusing it")
            if rel in seen:
                raise BundleError(f"{archive.name} holds {rel} twice; refusing it")
            seen.add(rel)
            if manifest is None:
                if rel != MANIFEST:
                    raise BundleError(f"{archive.name}'s first file is {rel!r}, not {MANIFEST}: "
                                      "not a bundle made by `resnet-edge bundle`")
                if member.size > MAX_MANIFEST_BYTES:
                    raise BundleError(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
                data = _read_member(tar, member, limits)
                manifest = parse_manifest(data)
                try:
                    dest.mkdir(parents=True, exist_ok=True)
                    os.mkdir(dest / root)
                except FileExistsError:
                    raise BundleError(f"{dest / root} already exists; extract into an empty "
                                      "folder") from None
                except OSError as exc:
                    raise BundleError(f"cannot create {dest / root}: {exc.strerror}") from None
                created.append(dest / root)
                root_fd = os.open(dest / root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                _write_new(root_fd, MANIFEST, [data])
                continue
            if rel == SIGNATURE:
                if member.size > MAX_SIGNATURE_BYTES:
                    raise BundleError(f"{SIGNATURE} is larger than {MAX_SIGNATURE_BYTES >> 10} KiB")
                _write_new(root_fd, SIGNATURE, [_read_member(tar, member, limits)])
                continue
            entry = manifest["files"].get(rel)
            if member.islnk():
                _copy_earlier(archive, member, rel, root, entry, manifest, written, root_fd, limits)
                continue
            if entry is None:
                raise BundleError(f"bundle file {rel} is not in {MANIFEST}; refusing the archive")
            if member.size != entry["bytes"]:
                raise BundleError(f"bundle file {rel} is {member.size} bytes, {MANIFEST} says "
                                  f"{entry['bytes']}; the bundle is damaged or modified")
            digest = hashlib.sha256()
            chunks = _stream_member(tar, member, limits, digest)
            _write_new(root_fd, rel, chunks)
            if digest.hexdigest() != entry["sha256"]:
                raise BundleError(f"bundle file {rel} does not match its sha256 in {MANIFEST} "
                                  "(damaged or modified); re-copy the bundle")
            written.add(rel)
        if manifest is None:
            raise BundleError(f"{archive.name} holds no {MANIFEST}; it is not a resnet-edge bundle")
        missing = sorted(set(manifest["files"]) - seen)
        if missing:
            raise BundleError(f"bundle file {missing[0]} is missing from {archive.name}; "
                              "re-copy the bundle")
    finally:
        if root_fd is not None:
            os.close(root_fd)
    return dest / root


def _read_member(tar, member, limits: _Limits) -> bytes:
    return b"".join(_stream_member(tar, member, limits, None))


def _stream_member(tar, member, limits: _Limits, digest):
    handle = tar.extractfile(member)
    remaining = member.size
    while remaining > 0:
        block = handle.read(min(CHUNK, remaining))
        if not block:
            raise BundleError(f"{limits.archive.name} ends inside {member.name}: truncated")
        remaining -= len(block)
        limits.add(len(block))
        if digest is not None:
            digest.update(block)
        yield block


def _write_new(root_fd: int, rel: str, chunks) -> None:
    """Create `rel` under the folder `root_fd`, every component new, never through a link."""
    parts = rel.split("/")
    fds = [root_fd]
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=fds[-1])
            except FileExistsError:
                pass
            fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                     dir_fd=fds[-1])
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
    except OSError as exc:
        raise BundleError(f"cannot write bundle file {rel}: {exc.strerror or exc}") from None
    finally:
        for fd in fds[1:]:
            os.close(fd)


def _copy_earlier(archive: Path, member, rel: str, root: str, entry: dict | None, manifest: dict,
                  written: set[str], root_fd: int, limits: _Limits) -> None:
    """A hard link member, as write_archive stores the second of two identical files: extracted
    as a copy of the earlier member it names, which must be a listed file already extracted and
    checked, with the very sha256 and size the manifest gives this one. Any other link is
    refused: nothing is ever created through it. The copy's bytes count against the limits
    like any member's: a thousand links to one file unpack to a thousand files."""
    target = member.linkname.partition("/")[2] if member.linkname.startswith(f"{root}/") else ""
    earlier = manifest["files"].get(target)
    if entry is None or target not in written or earlier is None or (
            earlier["sha256"], earlier["bytes"]) != (entry["sha256"], entry["bytes"]):
        raise BundleError(f"{archive.name} member {member.name!r} is a link; bundles hold regular "
                          "files only (or a second copy of a listed file written before it)")
    limits.add(earlier["bytes"])  # refused before the copy is written, not after
    fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=root_fd)
    with os.fdopen(fd, "rb") as source:
        _write_new(root_fd, rel, iter(lambda: source.read(CHUNK), b""))


def _remove_tree(folder: Path) -> None:
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


def write_archive(stage: Path, out: Path, root_name: str, manifest: bytes,
                  signature: bytes | None, mtime: int) -> None:
    """The archive safe_extract reads: the folder, manifest.json first, the signature, then
    every listed file in sorted order; regular files only, a second file with the bytes of an
    earlier one stored as a hard link to it (Triton's copy of model.onnx would double the
    archive), owned by nobody in particular, all of time `mtime`, in a gzip stream with no name
    or time of its own: the same files give the same bytes."""
    import gzip
    import io

    def info(name: str, size: int = 0, mode: int = 0o644, kind=tarfile.REGTYPE) -> tarfile.TarInfo:
        member = tarfile.TarInfo(f"{root_name}/{name}" if name else root_name)
        member.size, member.mode, member.type, member.mtime = size, mode, kind, mtime
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        return member

    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info("", mode=0o755, kind=tarfile.DIRTYPE))
        tar.addfile(info(MANIFEST, len(manifest)), io.BytesIO(manifest))
        if signature is not None:
            tar.addfile(info(SIGNATURE, len(signature)), io.BytesIO(signature))
        files, first = json.loads(manifest)["files"], {}
        for name in sorted(files):
            path = stage / name
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            same = first.setdefault((files[name]["sha256"], files[name]["bytes"]), name)
            if same != name:  # a second copy (Triton's model.onnx): stored once, linked
                link = info(name, 0, mode, tarfile.LNKTYPE)
                link.linkname = f"{root_name}/{same}"
                tar.addfile(link)
                continue
            with open(path, "rb") as handle:
                tar.addfile(info(name, path.stat().st_size, mode), handle)
