"""One exit-status convention for every command-line tool in ``tools/``.

- ``0``: done. Warnings, if any, were printed as ``warning: <file>: <problem>`` lines.
- ``2``: bad input (a missing, corrupt or inconsistent file, a datalist or bundle that fails its checks, a wrong
  argument value): the last line of the output is ``error: <file>: <problem>``.
- ``1``: anything else, i.e. a bug or an environment problem: Python's traceback.

The tools are run as ``python tools/<tool>.py``, so ``tools/`` is ``sys.path[0]`` and ``import cli`` works.
"""

from __future__ import annotations

import sys

import fire

from volssl.io import VolsslInputError

__all__ = ["EXIT_BAD_INPUT", "EXIT_ERROR", "EXIT_OK", "main", "run", "warn"]

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def warn(path, problem: str) -> None:
    """Print one warning line naming the file."""
    print(f"warning: {path}: {problem}", file=sys.stderr, flush=True)


def run(component, name: str | None = None, argv: list[str] | None = None) -> int:
    """Run ``component`` as a ``fire`` CLI and return the exit status of the convention above."""
    try:
        fire.Fire(component, command=argv, name=name)
    except VolsslInputError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    return EXIT_OK


def main(component, name: str | None = None) -> None:
    """``sys.exit(run(component))``: the ``__main__`` block of a tool."""
    sys.exit(run(component, name=name))
