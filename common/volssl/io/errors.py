"""The one exception type for bad input data."""

from __future__ import annotations


class VolsslInputError(ValueError):
    """Bad input: a missing, corrupt or inconsistent file, or a datalist that breaks the format.

    The message always names the file (or datalist entry) and the problem, so that a user can fix the input
    without reading a traceback.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(self.path, problem)  # both arguments: pickle and copy rebuild the error from them

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"
