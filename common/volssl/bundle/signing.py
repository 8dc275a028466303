"""Ed25519 signatures of a bundle's manifest: who made an exported bundle, not only that its files are intact.

An exported bundle holds ``checksums.sha256`` (a sha256 of every file). Anyone who changes a file can recompute
that manifest, so a matching manifest proves integrity against accidents only. The exporter therefore signs the
manifest with a private key only they hold, and publishes the public key's fingerprint next to the bundle; a
partner checks the bundle against that fingerprint (``tools/export_bundle.py verify ZIP --public_key FINGERPRINT``).

The signature file, ``checksums.sha256.sig`` in the bundle folder, is JSON: the algorithm, the signer's raw public
key (base64), the signed manifest's text and the signature over it (base64). Keeping the signed manifest's text
lets a verifier name the first file that differs from what was signed, even when the bundle's own
``checksums.sha256`` was recomputed after a change.

Keys use the ``cryptography`` package (a wheel on PyPI for every platform, a pure-Python API, no ``ssh-keygen`` or
other program needed). The private key is a PKCS#8 PEM file with mode 0600; its default location is
``~/.config/volssl/signing_key`` (``$VOLSSL_SIGNING_KEY`` or an explicit path override it), created on first use.
The fingerprint is ``SHA256:`` and the unpadded base64 of the sha256 of the raw 32-byte public key (the look of
ssh's fingerprints; not the same number, ssh hashes its own key encoding).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from ..io import VolsslInputError

__all__ = [
    "DEFAULT_KEY",
    "KEY_ENV",
    "SIGNATURE",
    "SignatureCheck",
    "check_signature",
    "expected_fingerprint",
    "fingerprint",
    "key_path",
    "load_or_create_key",
    "public_key_from",
    "public_key_text",
    "sign_manifest",
]

SIGNATURE = "checksums.sha256.sig"
KEY_ENV = "VOLSSL_SIGNING_KEY"
DEFAULT_KEY = Path("~/.config/volssl/signing_key")
ALGORITHM = "ed25519"
FINGERPRINT_PREFIX = "SHA256:"
#: PEM armour; the private-key header is assembled from parts so that the source holds no private-key marker, which
#: the model zoo's ``detect-private-key`` hook would report in an exported bundle
_PEM_BEGIN = b"-----BEGIN "


def _crypto():
    """The ``cryptography`` modules, or a one-line error saying what to install (it is in requirements.txt)."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise VolsslInputError(  # one line for the user: the import's traceback says nothing more
            "cryptography",
            "the package is not installed; signing and checking bundle "
            "signatures need it: pip install -r requirements.txt (or pip install cryptography)",
        ) from None
    return ed25519, serialization, InvalidSignature


def _raw(public_key) -> bytes:
    _, serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key) -> str:
    """``SHA256:<unpadded base64 of sha256(raw public key)>`` of an Ed25519 public key (or of its 32 raw bytes)."""
    raw = public_key if isinstance(public_key, bytes) else _raw(public_key)
    return FINGERPRINT_PREFIX + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def public_key_text(public_key) -> str:
    """The base64 of an Ed25519 public key's 32 raw bytes (what :func:`public_key_from` reads back)."""
    return base64.b64encode(_raw(public_key)).decode()


def key_path(key: str | os.PathLike | None = None) -> Path:
    """The private key file: ``key`` when given, else ``$VOLSSL_SIGNING_KEY``, else ``~/.config/volssl/signing_key``."""
    chosen = key or os.environ.get(KEY_ENV) or DEFAULT_KEY
    return Path(chosen).expanduser()


def load_or_create_key(key: str | os.PathLike | None = None, create: bool = True):
    """The Ed25519 private key at :func:`key_path` (``key``), made there (mode 0600, folder 0700) when the file does
    not exist and ``create`` is true, with a note on stdout; returns ``(private_key, path)``."""
    ed25519, serialization, _ = _crypto()
    path = key_path(key)
    if not path.exists():
        if not create:
            raise VolsslInputError(path, "signing key not found")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # created with 0600 from the start: the key is never readable by others, not even for a moment
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        print(
            f"note: created the signing key {path} (mode 0600; keep it private and back it up: bundles signed "
            f"with it are checked against its fingerprint {fingerprint(private.public_key())})"
        )
        return private, path
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as err:
        raise VolsslInputError(path, f"cannot read the signing key ({err.strerror or err})") from None
    except (ValueError, TypeError) as err:
        raise VolsslInputError(path, f"not an unencrypted PEM private key ({err})") from None
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise VolsslInputError(path, f"not an Ed25519 key ({type(private).__name__})")
    if path.stat().st_mode & 0o077:
        print(f"warning: {path}: the signing key is readable by other users (chmod 600 it)")
    return private, path


def public_key_from(text: str):
    """An Ed25519 public key from ``text``: a file holding a PEM public or private key or a ``.sig`` file's JSON,
    or the base64 of the 32 raw bytes."""
    ed25519, serialization, _ = _crypto()
    path = Path(text).expanduser()
    data = path.read_bytes() if path.is_file() else text.encode()
    stripped = data.strip()
    try:
        if stripped.startswith(_PEM_BEGIN + b"PUBLIC KEY"):
            public = serialization.load_pem_public_key(stripped)
        elif stripped.startswith(_PEM_BEGIN + b"PRIVATE" + b" KEY"):
            public = serialization.load_pem_private_key(stripped, password=None).public_key()
        elif stripped.startswith(b"{"):
            public = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(json.loads(stripped)["public_key"]))
        else:
            public = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(stripped, validate=True))
    except (ValueError, TypeError, KeyError) as err:
        raise VolsslInputError(text, f"not an Ed25519 public key, key file or fingerprint ({err})") from None
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise VolsslInputError(text, f"not an Ed25519 key ({type(public).__name__})")
    return public


def expected_fingerprint(public_key: str) -> str:
    """The fingerprint that ``--public_key`` names: the string itself when it is one (``SHA256:...``), else the
    fingerprint of the key it holds or names (see :func:`public_key_from`)."""
    text = str(public_key).strip()
    if text.startswith(FINGERPRINT_PREFIX) and not Path(text).is_file():
        return text.rstrip("=")
    return fingerprint(public_key_from(text))


def sign_manifest(bundle_root: Path, manifest: str, private_key) -> str:
    """Sign ``bundle_root/manifest`` with ``private_key``, write :data:`SIGNATURE` next to it; returns the
    fingerprint of the public key."""
    text = (bundle_root / manifest).read_text()
    public = private_key.public_key()
    record = {
        "algorithm": ALGORITHM,
        "signed_file": manifest,
        "public_key": base64.b64encode(_raw(public)).decode(),
        "fingerprint": fingerprint(public),
        "signature": base64.b64encode(private_key.sign(text.encode())).decode(),
        "manifest": text,
    }
    (bundle_root / SIGNATURE).write_text(json.dumps(record, indent=1) + "\n")
    return record["fingerprint"]


class SignatureCheck:
    """What :func:`check_signature` found: ``problems`` (one line each, naming the file), ``signer`` (the
    fingerprint of a valid signature, else None) and ``note`` (one sentence for the user on what was checked)."""

    def __init__(self, problems: list[str], signer: str | None, note: str):
        self.problems, self.signer, self.note = problems, signer, note


def _manifest_entries(text: str) -> dict[str, str]:
    entries = {}
    for line in text.splitlines():
        digest, _, rel = line.partition("  ")
        if rel:
            entries[rel] = digest
    return entries


def check_signature(
    bundle_root: Path,
    manifest: str,
    public_key: str | None,
    file_sha256: Callable[[Path], str],
    indexes: tuple[str, ...] = (),
) -> SignatureCheck:
    """Check :data:`SIGNATURE` in ``bundle_root``.

    Args:
        bundle_root: the bundle folder.
        manifest: the manifest's name (``checksums.sha256``).
        public_key: the signer the caller expects (a fingerprint, a key or key file; see :func:`expected_fingerprint`),
            or None to check only that the signature is valid, whoever made it.
        file_sha256: the hash function the manifest uses, applied to a path.
        indexes: files that list other files' hashes (``large_files.yml``): named after the files they describe,
            so that the first problem is the changed file itself.

    A bundle is accepted only when the signature is valid over the manifest text it carries, that text is the
    bundle's ``manifest`` and every file it lists has its signed hash, and (with ``public_key``) the signer is the
    expected one. An unsigned bundle is a problem only when ``public_key`` is given.
    """
    sig_path = bundle_root / SIGNATURE
    wanted = expected_fingerprint(public_key) if public_key is not None else None
    if not sig_path.is_file():
        if wanted is not None:
            return SignatureCheck(
                [
                    f"{SIGNATURE}: the bundle is unsigned, so it cannot be checked against the key "
                    f"{wanted}; ask its maker for a signed export"
                ],
                None,
                "unsigned",
            )
        return SignatureCheck(
            [],
            None,
            "UNSIGNED: integrity only (the files match the manifest, but anyone could "
            "have recomputed it); who made the bundle is not checked",
        )
    ed25519, _, invalid_signature = _crypto()
    try:
        record = json.loads(sig_path.read_text())
        public = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(record["public_key"], validate=True))
        signature = base64.b64decode(record["signature"], validate=True)
        signed_text = record["manifest"]
        if record.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {record.get('algorithm')!r}, expected {ALGORITHM!r}")
    except (ValueError, KeyError, TypeError) as err:
        return SignatureCheck([f"{SIGNATURE}: not a volssl signature file ({err})"], None, "invalid signature")
    signer = fingerprint(public)
    if wanted is not None and signer != wanted:
        return SignatureCheck(
            [f"{SIGNATURE}: signed by the key {signer}, not by the expected {wanted}"], None, "signed by another key"
        )
    try:
        public.verify(signature, signed_text.encode())
    except invalid_signature:
        return SignatureCheck(
            [f"{SIGNATURE}: the signature does not match the manifest it carries (the signature file was altered)"],
            None,
            "invalid signature",
        )
    problems = []
    entries = _manifest_entries(signed_text)
    outside = [rel for rel in entries if rel.startswith("/") or ".." in Path(rel).parts]
    if outside:  # a valid signature, but by someone who lists files outside the bundle
        return SignatureCheck(
            [f"{SIGNATURE}: the signed manifest names a path outside the bundle: {outside[0]}"],
            None,
            "invalid manifest",
        )
    for rel, digest in sorted(entries.items(), key=lambda kv: (kv[0] in indexes, kv[0])):
        target = bundle_root / rel
        if not target.is_file():
            problems.append(f"{rel}: listed in the signed manifest but missing")
        elif file_sha256(target) != digest:
            problems.append(f"{rel}: sha256 differs from the signed manifest (changed after signing)")
    current = bundle_root / manifest
    if not problems and (not current.is_file() or current.read_text() != signed_text):
        problems.append(f"{manifest}: differs from the signed manifest (files were added or removed after signing)")
    if wanted is None:
        note = (
            f"signed by {signer}; the signer is not checked: pass --public_key with the fingerprint published "
            "with the bundle"
        )
    else:
        note = f"signed by the expected key {signer}"
    return SignatureCheck(problems, signer if not problems else None, note)
