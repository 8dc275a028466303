"""Errors at the bundle boundary: say which file and what to do, as the last line of the output."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..io import VolsslInputError

__all__ = ["input_error_in", "install_error_hook", "require_file"]

TRACEBACK_ENV = "VOLSSL_TRACEBACK"


def require_file(path, what: str, hint: str = "") -> str:
    """Return ``path`` (as a string) when it is a file; otherwise raise a :class:`VolsslInputError` that names it,
    says what it is and what to do (``hint``).

    For config expressions, e.g. ``"$volssl.bundle.require_file(@checkpoint, 'the trained weights', 'train ...')"``.
    """
    if not Path(path).is_file():
        raise VolsslInputError(path, f"{what} not found" + (f": {hint}" if hint else ""))
    return str(path)


def input_error_in(exc: BaseException | None) -> VolsslInputError | None:
    """The first :class:`VolsslInputError` in ``exc``'s chain of causes and contexts (MONAI wraps the errors raised
    inside config expressions and components in its own ``RuntimeError``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, VolsslInputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _hook(previous):
    def hook(exc_type, exc, tb):
        found = input_error_in(exc)
        if found is None:
            return previous(exc_type, exc, tb)
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            previous(exc_type, exc, tb)
        else:
            print(f"(bad input: the traceback is hidden, set {TRACEBACK_ENV}=1 to see it)", file=sys.stderr)
        print(f"VolsslInputError: {found}", file=sys.stderr, flush=True)

    hook.volssl_hook = True  # type: ignore[attr-defined]
    return hook


def install_error_hook() -> None:
    """Make an uncaught :class:`VolsslInputError` (however deeply MONAI wrapped it) end the output with its one-line
    message, the traceback shown only when ``VOLSSL_TRACEBACK=1``; other errors keep Python's usual report.

    Called from the bundles' ``setup`` steps (the first step of ``run``), i.e. only for command-line runs; servers
    and notebooks are left as they are. Idempotent.
    """
    if not getattr(sys.excepthook, "volssl_hook", False):
        sys.excepthook = _hook(sys.excepthook)
