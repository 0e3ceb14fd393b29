"""Ed25519 signatures over a bundle's manifest.json, with the `cryptography` library.

`keygen` writes NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub (SubjectPublicKeyInfo PEM).
`bundle --sign NAME.key` adds manifest.sig; a verifier given NAME.pub refuses a bundle whose
signature is missing, made by another key, or no longer matching manifest.json. The public key
always comes from the verifier's side, never from inside the bundle: a signature only says who
signed, so it is worth exactly as much as the verifier's trust in that key (and in the verify.py
that checks it: use a copy you already trust, not the one inside the bundle being checked).

No imports from this package: the bundle carries this file in lib/ for verify.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

ALGORITHM = "ed25519"
MAX_KEY_BYTES = 64 << 10  # an Ed25519 PEM key is about 120 bytes
INSTALL = "pip install cryptography (or apt install python3-cryptography)"


class SignatureError(Exception):
    """A key or signature problem; exit `code` (2 refused, 3 cryptography missing)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# Ed25519 came in cryptography 2.6; before 3.1 every key loader needs its `backend` argument
# (Ubuntu 20.04, JetPack 5's base, ships 2.8)
OLDEST, BACKEND_OPTIONAL = (2, 6), (3, 1)


def _version(module) -> tuple[int, ...]:
    parts = []
    for part in str(getattr(module, "__version__", "0")).split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _crypto():
    """(serialization, ed25519, InvalidSignature, the loaders' keyword arguments)."""
    try:
        import cryptography
    except ImportError:
        raise SignatureError(f"checking signatures needs the cryptography package; {INSTALL}",
                             code=3) from None
    if _version(cryptography) < OLDEST:
        raise SignatureError(f"cryptography {cryptography.__version__} is too old for Ed25519 "
                             f"signatures (2.6 or newer); pip install 'cryptography>=2.6'", code=3)
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    options = {}
    if _version(cryptography) < BACKEND_OPTIONAL:
        from cryptography.hazmat.backends import default_backend
        options["backend"] = default_backend()
    return serialization, ed25519, InvalidSignature, options


def key_id(public_key) -> str:
    """A short fingerprint: the first 16 hex digits of the sha256 of the raw public key."""
    serialization = _crypto()[0]
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(out: str | os.PathLike, *, force: bool = False) -> tuple[Path, Path, str]:
    """Write OUT.key (0600) and OUT.pub; returns (key, pub, key id)."""
    serialization, ed25519 = _crypto()[:2]
    out = Path(out)
    private_path, public_path = out.with_name(out.name + ".key"), out.with_name(out.name + ".pub")
    for path in (private_path, public_path):
        if path.is_symlink():  # a link, dangling or not, would have the key written elsewhere
            raise SignatureError(f"{path} is a symbolic link; keys are written only as plain "
                                 "files: remove the link or choose another --name")
        if os.path.lexists(path) and not force:
            raise SignatureError(f"{path} exists; keep it, choose another --name, or pass --force")
    if not out.parent.is_dir():
        raise SignatureError(f"folder {out.parent} does not exist; create it first")
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    for path, data, mode in ((private_path, pem, 0o600), (public_path, public, 0o644)):
        if force:
            path.unlink(missing_ok=True)
        # O_EXCL: a link planted since the check above is refused, not followed; the private
        # key is 0600 from its first byte
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:
            raise SignatureError(f"{path} appeared while the key was made; nothing was "
                                 "written over it, run keygen again") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    return private_path, public_path, key_id(private.public_key())


def _load(path, private: bool):
    serialization, ed25519, _, options = _crypto()
    path = Path(path)
    try:
        # bounded (/dev/zero is a path too), and a FIFO opened without waiting for a writer
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            if stat.S_ISFIFO(os.fstat(handle.fileno()).st_mode):
                raise SignatureError(f"{path} is a pipe, not a key file; give NAME.key or NAME.pub")
            data = handle.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise SignatureError(f"cannot read key {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_BYTES:
        raise SignatureError(f"{path} is over {MAX_KEY_BYTES >> 10} KiB, which no key file is; "
                             "give NAME.key or NAME.pub from `resnet-edge keygen`")
    from cryptography.exceptions import UnsupportedAlgorithm
    try:
        key = (serialization.load_pem_private_key(data, password=None, **options) if private
               else serialization.load_pem_public_key(data, **options))
    except UnsupportedAlgorithm as exc:  # the key may be fine: this library cannot read it
        import cryptography
        raise SignatureError(f"cryptography {cryptography.__version__} cannot read {path} here "
                             f"({exc}); its OpenSSL needs Ed25519 (1.1.1 or newer): pip install "
                             "-U cryptography", code=3) from None
    except ValueError as exc:
        kind = "private key (NAME.key)" if private else "public key (NAME.pub)"
        said = str(exc).split(". ")[0].rstrip(".")  # cryptography's first sentence, whole
        raise SignatureError(f"{path} is not a PEM {kind} ({said}); make one with "
                             "`resnet-edge keygen`") from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise SignatureError(f"{path} is not an Ed25519 key; make one with `resnet-edge keygen`")
    return key


def sign(manifest: bytes, private_key_path) -> bytes:
    """manifest.sig for these manifest.json bytes."""
    key = _load(private_key_path, private=True)
    signature = key.sign(manifest)
    return (json.dumps({"algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
                        "signature": base64.b64encode(signature).decode()}, indent=2) + "\n").encode()


def read_signature(data: bytes | None) -> dict | None:
    if data is None:
        return None
    try:
        sig = json.loads(data.decode("utf-8"))
        raw = base64.b64decode(sig["signature"], validate=True)
        if sig.get("algorithm") != ALGORITHM or len(raw) != 64 or not isinstance(sig.get("key_id"), str):
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise SignatureError("manifest.sig is not an Ed25519 signature made by `resnet-edge bundle "
                             "--sign`; the bundle is damaged or forged") from None
    return {"key_id": sig["key_id"][:64], "raw": raw}


def check(manifest: bytes, signature: bytes | None, public_key_path=None) -> dict:
    """What can be said about the signature; refuses (SignatureError) when a key is given and
    the bundle is unsigned, signed by another key, or signed over other bytes."""
    sig = read_signature(signature)
    if public_key_path is None:
        return {"signed": sig is not None, "verified": False,
                "key_id": sig["key_id"] if sig else None}
    invalid = _crypto()[2]
    key = _load(public_key_path, private=False)
    expected = key_id(key)
    if sig is None:
        raise SignatureError(f"the bundle is unsigned, but --key {public_key_path} asks for a "
                             "signature; sign it with `resnet-edge bundle --sign`")
    if sig["key_id"] != expected:
        raise SignatureError(f"the bundle is signed by another key ({sig['key_id']}), not "
                             f"{public_key_path} ({expected})")
    try:
        key.verify(sig["raw"], manifest)
    except invalid:
        raise SignatureError("the signature does not match manifest.json: the bundle was modified "
                             "after it was signed") from None
    return {"signed": True, "verified": True, "key_id": expected}
