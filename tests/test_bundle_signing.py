"""Signed exports (volssl.bundle.signing) and the zip checks before extraction (volssl.bundle.archive), on small
hand-made bundles and crafted zips: no training, a few seconds."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bundle_helpers import REPO_ROOT, export_tool

pytest.importorskip("cryptography")

from volssl.bundle import archive, signing  # noqa: E402
from volssl.io import VolsslInputError  # noqa: E402

MANIFEST = "checksums.sha256"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rehash(root: Path) -> None:
    """Recompute the manifest and large_files.yml as a forger would (export_bundle's own writers)."""
    tool = export_tool()
    (root / tool.LARGE_FILES).write_text(tool._large_files(root, ""))
    tool._write_manifest(root)


def _bundle(root: Path) -> Path:
    """A minimal bundle folder with a manifest (signature checks do not need real configs)."""
    (root / "models").mkdir(parents=True)
    (root / "models" / "model.pt").write_bytes(b"weights" * 100)
    (root / "configs").mkdir()
    (root / "configs" / "inference.json").write_text("{}\n")
    _rehash(root)
    return root


def _sign(root: Path, key_file: Path) -> str:
    private, _ = signing.load_or_create_key(key_file)
    return signing.sign_manifest(root, MANIFEST, private)


def _check(root: Path, public_key):
    return signing.check_signature(root, MANIFEST, public_key, _sha, indexes=("large_files.yml",))


def test_key_created_once_with_0600_and_a_note(tmp_path, capsys, monkeypatch):
    key_file = tmp_path / "cfg" / "signing_key"
    monkeypatch.setenv(signing.KEY_ENV, str(key_file))
    first, path = signing.load_or_create_key()
    assert path == key_file and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "note: created the signing key" in capsys.readouterr().out
    again, _ = signing.load_or_create_key()
    assert "created" not in capsys.readouterr().out
    assert signing.fingerprint(first.public_key()) == signing.fingerprint(again.public_key())
    assert signing.key_path("explicit") == Path("explicit")  # --key wins over the environment
    monkeypatch.delenv(signing.KEY_ENV)
    assert signing.key_path() == Path("~/.config/volssl/signing_key").expanduser()


def test_fingerprint_is_sha256_of_the_raw_key(tmp_path):
    private, _ = signing.load_or_create_key(tmp_path / "k")
    raw = private.public_key().public_bytes_raw()
    assert signing.public_key_from(signing.public_key_text(private.public_key())).public_bytes_raw() == raw
    assert signing.fingerprint(private.public_key()) == "SHA256:" + base64.b64encode(
        hashlib.sha256(raw).digest()).decode().rstrip("=")
    # a key file, a public key's base64 and the fingerprint itself name the same signer
    fp = signing.fingerprint(private.public_key())
    for given in (str(tmp_path / "k"), signing.public_key_text(private.public_key()), fp):
        assert signing.expected_fingerprint(given) == fp
    with pytest.raises(VolsslInputError, match="not an Ed25519 public key"):
        signing.expected_fingerprint("not a key")


def test_signed_bundle_passes_only_with_its_key(tmp_path):
    root = _bundle(tmp_path / "b")
    fp = _sign(root, tmp_path / "key")
    assert _check(root, fp).problems == [] and _check(root, fp).signer == fp
    assert "signer is not checked" in _check(root, None).note
    other, _ = signing.load_or_create_key(tmp_path / "other")
    wrong = _check(root, signing.fingerprint(other.public_key()))
    assert wrong.problems and "signed by the key" in wrong.problems[0] and fp in wrong.problems[0]


def test_tampered_and_rehashed_bundle_names_the_file(tmp_path):
    root = _bundle(tmp_path / "b")
    fp = _sign(root, tmp_path / "key")
    (root / "models" / "model.pt").write_bytes(b"evil" * 100)
    _rehash(root)  # the manifest and large_files.yml agree with the changed weights again
    problems = _check(root, fp).problems
    assert problems[0] == "models/model.pt: sha256 differs from the signed manifest (changed after signing)"
    assert problems[1].startswith("large_files.yml: sha256 differs from the signed manifest")


def test_added_file_and_forged_signature_are_rejected(tmp_path):
    root = _bundle(tmp_path / "b")
    fp = _sign(root, tmp_path / "key")
    (root / "configs" / "extra.json").write_text("{}\n")
    _rehash(root)
    assert _check(root, fp).problems == [f"{MANIFEST}: differs from the signed manifest (files were added or "
                                         "removed after signing)"]
    record = json.loads((root / signing.SIGNATURE).read_text())
    record["manifest"] = (root / MANIFEST).read_text()  # a forger edits the signed text but cannot re-sign it
    (root / signing.SIGNATURE).write_text(json.dumps(record))
    assert "signature does not match" in _check(root, fp).problems[0]


def test_signed_manifest_naming_a_path_outside_the_bundle_is_rejected(tmp_path):
    root = _bundle(tmp_path / "b")
    (tmp_path / "outside.txt").write_text("x")
    with open(root / MANIFEST, "a") as f:
        f.write(f"{_sha(tmp_path / 'outside.txt')}  ../outside.txt\n")
    fp = _sign(root, tmp_path / "key")  # validly signed, by someone who lists a file outside the bundle
    assert _check(root, fp).problems == [f"{signing.SIGNATURE}: the signed manifest names a path outside the "
                                         "bundle: ../outside.txt"]


def test_unsigned_bundle_says_so(tmp_path):
    root = _bundle(tmp_path / "b")
    assert _check(root, None).problems == [] and _check(root, None).note.startswith("UNSIGNED: integrity only")
    private, _ = signing.load_or_create_key(tmp_path / "key")
    problems = _check(root, signing.fingerprint(private.public_key())).problems
    assert len(problems) == 1 and "the bundle is unsigned" in problems[0]


def test_key_command_prints_the_fingerprint(tmp_path):
    key_file = tmp_path / "key"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "export_bundle.py"), "key", "--key",
                           str(key_file)], capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    private, _ = signing.load_or_create_key(key_file, create=False)
    assert f"fingerprint {signing.fingerprint(private.public_key())}" in proc.stdout


# -- zips checked before extraction ------------------------------------------------------------------------------------
def _zip(path: Path, members: list[tuple[str, bytes]], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("name, members, symlink, limits, expected", [
    ("parent", [("b/../../evil.txt", b"x")], None, {}, "member 'b/../../evil.txt': a path with '..'"),
    ("absolute", [("/tmp/evil.txt", b"x")], None, {}, "member '/tmp/evil.txt': an absolute path"),
    ("link", [("b/a.txt", b"x")], "b/link", {}, "member 'b/link': a symbolic link"),
    ("oversized", [("b/a.txt", b"x" * 50), ("b/big.bin", b"y" * 2000)], None, {"max_total_bytes": 1000},
     "member 'b/big.bin': the uncompressed total reaches 2050 bytes, more than the limit of 1000"),
    ("many", [(f"b/{i}.txt", b"x") for i in range(5)], None, {"max_members": 3}, "5 members, more than the limit of 3"),
    ("bomb", [("b/zeros.bin", bytes(1_000_000))], None, {}, "member 'b/zeros.bin': uncompressed 1000000 bytes"),
])
def test_crafted_zips_are_rejected_before_extraction(tmp_path, name, members, symlink, limits, expected):
    zip_path = _zip(tmp_path / f"{name}.zip", members, symlink)
    target = tmp_path / "out"
    with pytest.raises(VolsslInputError) as err:
        archive.safe_extract(zip_path, target, **limits)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not target.exists() and not (tmp_path / "evil.txt").exists()


def test_verify_rejects_a_crafted_zip_with_one_line(tmp_path):
    zip_path = _zip(tmp_path / "parent.zip", [("b/checksums.sha256", b""), ("b/../evil.txt", b"x")])
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "export_bundle.py"), "verify", str(zip_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {zip_path}: member 'b/../evil.txt'"), proc.stderr


def test_a_plain_zip_extracts(tmp_path):
    zip_path = _zip(tmp_path / "ok.zip", [("b/configs/a.json", b"{}"), ("b/models/m.pt", b"w" * 100)])
    archive.safe_extract(zip_path, tmp_path / "out")
    assert (tmp_path / "out" / "b" / "models" / "m.pt").read_bytes() == b"w" * 100
