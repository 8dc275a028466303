"""Imported at start-up by the subprocesses of the standalone-bundle tests (``PYTHONPATH`` names this folder).

It makes the test environment look like a partner's: only the packages a bundle's ``metadata.json`` declares can be
imported, and ``volssl`` only from the bundle's own vendored copy. ``VOLSSL_STANDALONE_BUNDLE`` is the bundle folder,
``VOLSSL_STANDALONE_BLOCK`` the comma-separated top-level modules to refuse (the project's other requirements), and
``VOLSSL_STANDALONE_HIDE`` the ``os.pathsep``-separated ``sys.path`` entries to drop (the editable install's).
"""

import importlib.abc
import importlib.machinery
import os
import sys

_bundle = os.path.realpath(os.environ.get("VOLSSL_STANDALONE_BUNDLE", "/nonexistent"))
_blocked = {m for m in os.environ.get("VOLSSL_STANDALONE_BLOCK", "").split(",") if m}
_hidden = {os.path.realpath(p) for p in os.environ.get("VOLSSL_STANDALONE_HIDE", "").split(os.pathsep) if p}
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) not in _hidden]


class _StandaloneGuard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in _blocked:
            raise ModuleNotFoundError(f"No module named '{name}' (not declared in the bundle's metadata.json)")
        if name == "volssl":
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            origin = os.path.realpath(spec.origin) if spec is not None and spec.origin else ""
            if not origin.startswith(_bundle + os.sep):
                raise ModuleNotFoundError(f"No module named 'volssl' in the bundle {_bundle} (found: {origin or 'none'})")
            return spec
        return None


sys.meta_path.insert(0, _StandaloneGuard())
