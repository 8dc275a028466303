"""Bundle zips checked before anything is extracted: a zip from elsewhere is untrusted input.

:func:`check_members` looks at the zip's central directory only and rejects, naming the member: absolute paths and
paths with ``..`` (they would write outside the target folder), symbolic links and other non-regular files (the Unix
mode in the member's external attributes), more members than ``max_members``, a total uncompressed size over
``max_total_bytes``, and a member whose uncompressed size is more than ``max_ratio`` times its compressed size (a zip
bomb). :func:`safe_extract` extracts only after those checks, and then each member with at most its declared size.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..io import VolsslInputError

__all__ = ["MAX_MEMBERS", "MAX_RATIO", "MAX_TOTAL_BYTES", "check_members", "safe_extract"]

# an export holds ~200 files (configs, docs, the vendored package) and a few hundred MB of weights at most
MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 8 * 1024**3
# deflate reaches ~1000:1 only on degenerate input; real weights and text stay far below 100:1
MAX_RATIO = 200


def _member_problem(info: zipfile.ZipInfo, max_ratio: float) -> str | None:
    name = info.filename
    if "\\" in name or PureWindowsPath(name).drive:
        return "a Windows path (drive or backslash)"
    path = PurePosixPath(name)
    if path.is_absolute():
        return "an absolute path"
    if ".." in path.parts:
        return "a path with '..' (it would be written outside the target folder)"
    mode = info.external_attr >> 16
    if mode and stat.S_ISLNK(mode):
        return "a symbolic link"
    # no file-type bits (S_IFMT 0): a zip written without Unix attributes, i.e. plain files
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return f"not a regular file (mode {oct(mode)})"
    if info.compress_size and info.file_size / info.compress_size > max_ratio:
        return f"uncompressed {info.file_size} bytes from {info.compress_size} (more than {max_ratio}:1, a zip bomb?)"
    return None


def check_members(
    zip_path: Path, max_members: int = MAX_MEMBERS, max_total_bytes: int = MAX_TOTAL_BYTES, max_ratio: float = MAX_RATIO
) -> list[zipfile.ZipInfo]:
    """The members of ``zip_path`` when every one passes the checks above; otherwise a
    :class:`~volssl.io.VolsslInputError` naming the zip and the first offending member."""
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = zf.infolist()
    except zipfile.BadZipFile as err:
        raise VolsslInputError(zip_path, f"not a readable zip file ({err})") from None
    if len(members) > max_members:
        raise VolsslInputError(zip_path, f"{len(members)} members, more than the limit of {max_members}")
    total = 0
    for info in members:
        problem = _member_problem(info, max_ratio)
        if problem:
            raise VolsslInputError(zip_path, f"member {info.filename!r}: {problem}; nothing was extracted")
        total += info.file_size
        if total > max_total_bytes:
            raise VolsslInputError(
                zip_path,
                f"member {info.filename!r}: the uncompressed total reaches {total} bytes, "
                f"more than the limit of {max_total_bytes}; nothing was extracted",
            )
    return members


def safe_extract(zip_path: Path, target: Path, **limits) -> Path:
    """Extract ``zip_path`` into ``target`` after :func:`check_members` (``limits``: its keyword arguments);
    returns ``target``. Each member is copied with at most its declared size, so a lying header cannot make a
    member larger than what was checked."""
    target = Path(target)
    members = check_members(zip_path, **limits)
    root = target.resolve()
    with zipfile.ZipFile(zip_path) as zf:
        for info in members:
            dest = (root / info.filename).resolve()
            if root not in dest.parents and dest != root:  # belt and braces: already excluded by check_members
                raise VolsslInputError(zip_path, f"member {info.filename!r}: outside the target folder")
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                remaining = info.file_size
                while True:
                    block = src.read(min(1 << 20, remaining + 1))
                    if not block:
                        break
                    remaining -= len(block)
                    if remaining < 0:
                        raise VolsslInputError(zip_path, f"member {info.filename!r}: larger than its declared size")
                    out.write(block)
    return target
