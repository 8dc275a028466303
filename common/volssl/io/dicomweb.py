"""A small DICOMweb client (standard library only): STOW-RS uploads and QIDO-RS searches.

``store_files`` sends DICOM files to ``<url>/studies`` as ``multipart/related; type="application/dicom"`` requests
(PS3.18 STOW-RS), a batch of files per request, and reads the server's answer: a file the server refused is named
with the server's reason. ``search`` is a QIDO-RS query returning the DICOM JSON objects.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import VolsslInputError

__all__ = ["search", "store_files", "tag_value"]

BATCH = 32  # files per STOW-RS request: bounded request size, few round trips
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
REFERENCED_SOP_INSTANCE = "00081155"


def tag_value(item: Mapping, tag: str, default=None):
    """The first value of ``tag`` (8 hex digits, e.g. ``"0020000E"``) in a DICOM JSON object."""
    values = item.get(tag, {}).get("Value") or [default]
    return values[0]


def _request(
    url: str, data: bytes | None = None, headers: Mapping | None = None, method: str | None = None, timeout: float = 120
):
    req = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError) as err:
        raise VolsslInputError(url, f"no DICOMweb server answers there ({err})") from err


def store_files(url: str, files: Iterable, batch: int = BATCH) -> int:
    """Upload ``files`` with STOW-RS to the DICOMweb service at ``url`` (e.g. ``http://127.0.0.1:8042/dicom-web``);
    returns the number of instances stored.

    Raises:
        VolsslInputError: no server at ``url``, or the server refused a request or an instance (naming the file and
            the server's reason).
    """
    files = [Path(f) for f in files]
    endpoint = url.rstrip("/") + "/studies"
    stored = 0
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        boundary = uuid.uuid4().hex
        parts = []
        for path in chunk:
            parts.append(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        status, answer = _request(endpoint, body, headers, method="POST")
        if status not in (200, 202):
            text = answer.decode(errors="replace")[:300]
            batch = f"this batch of {len(chunk)} file(s)"
            raise VolsslInputError(chunk[0], f"STOW-RS to {endpoint} answered HTTP {status} for {batch}: {text}")
        failed = json.loads(answer or b"{}").get(FAILED_SOP_SEQUENCE, {}).get("Value", [])
        if failed:
            uid = tag_value(failed[0], REFERENCED_SOP_INSTANCE, "?")
            reason = tag_value(failed[0], FAILURE_REASON, "?")
            refused = f"the server refused {len(failed)} instance(s) of this batch"
            raise VolsslInputError(chunk[0].parent, f"{refused}, e.g. {uid} (failure reason {reason})")
        stored += len(chunk)
    return stored


def search(url: str, level: str = "series", filters: Mapping | None = None) -> list[dict]:
    """A QIDO-RS search (``level``: ``studies``, ``series`` or ``instances``) with ``filters`` (keyword or tag ->
    value); returns the DICOM JSON objects.

    Raises:
        VolsslInputError: no server at ``url`` or an error answer.
    """
    query = urllib.parse.urlencode(
        {**(filters or {}), "includefield": "all"} if level != "instances" else dict(filters or {})
    )
    endpoint = f"{url.rstrip('/')}/{level}" + (f"?{query}" if query else "")
    status, answer = _request(endpoint, headers={"Accept": "application/dicom+json"})
    if status == 204 or not answer:
        return []
    if status != 200:
        raise VolsslInputError(endpoint, f"QIDO-RS answered HTTP {status}: {answer.decode(errors='replace')[:300]}")
    return json.loads(answer)
