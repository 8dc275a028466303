"""requirements.txt declares every third-party package that volssl and the tools in tools/ import at run time
(the tests' own packages are in requirements-dev.txt; tools/monailabel_app has its own requirements file)."""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions

from bundle_helpers import REPO_ROOT, _requirement_names

# packages that come with another declared one and are imported only through it
PROVIDED_BY = {"ignite": "pytorch-ignite", "itk": "itk-io", "yaml": None}
# imported (lazily) only by the model-zoo contributor checks of volssl.bundle.zoo, which a user never runs: declared
# in requirements-dev.txt with the zoo's code-style tools
DEV_ONLY = {"identify": "volssl/bundle/zoo.py"}


def _imported_top_modules(files) -> dict[str, str]:
    """Top-level module -> first file importing it, over absolute imports of ``files``."""
    found: dict[str, str] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO_ROOT)))
    return found


def test_runtime_imports_are_declared_in_requirements_txt():
    files = sorted((REPO_ROOT / "common" / "volssl").rglob("*.py")) + sorted((REPO_ROOT / "tools").glob("*.py"))
    local = {p.stem for p in (REPO_ROOT / "tools").glob("*.py")} | {"volssl"}
    declared = _requirement_names(REPO_ROOT / "requirements.txt")
    dev_declared = _requirement_names(REPO_ROOT / "requirements-dev.txt")
    dists = packages_distributions()
    missing = []
    for module, where in sorted(_imported_top_modules(files).items()):
        if module in local or module in sys.stdlib_module_names or module.startswith("_"):
            continue
        if module in PROVIDED_BY and PROVIDED_BY[module] is None:
            continue
        if module in DEV_ONLY and where.endswith(DEV_ONLY[module]):
            assert module in dev_declared, f"{module}: imported by {where}, declared in neither requirements file"
            continue
        names = {d.lower() for d in dists.get(module, [])} | ({PROVIDED_BY[module]} if module in PROVIDED_BY else set())
        if not names & declared:
            missing.append(f"{module} (imported by {where}; distributions {sorted(names) or 'unknown'})")
    assert not missing, f"not in requirements.txt: {missing}"


def test_missing_jsonschema_is_a_clear_error(monkeypatch, tmp_path):
    """MONAI imports jsonschema optionally and, without it, verify_metadata fails with an unrelated TypeError; the
    export tool says which package is missing instead."""
    import pytest

    from bundle_helpers import export_tool
    from volssl.io import VolsslInputError

    monkeypatch.setitem(sys.modules, "jsonschema", None)  # `import jsonschema` now raises ImportError
    meta = REPO_ROOT / "bundles" / "coral_mri_segmentation" / "configs" / "metadata.json"
    with pytest.raises(VolsslInputError, match="needs the jsonschema package: pip install -r requirements.txt"):
        export_tool().metadata_problems(meta)
