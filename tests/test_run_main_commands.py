"""The commands the main job prints can be pasted into a fresh shell: they name an interpreter that has MONAI and
fire (not a bare ``python``), and the verify line names the zip the job wrote."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))

import run_main  # noqa: E402


class _FakeProc:
    returncode = 0
    stdout = iter(())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_printed_bundle_command_names_a_working_interpreter(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    started = []
    monkeypatch.setattr(run_main.subprocess, "Popen", lambda cmd, **kw: started.append(cmd) or _FakeProc())
    configs = REPO_ROOT / "bundles" / "coral_mri_segmentation" / "configs"
    run_main.bundle_run([configs / "train.json"], tmp_path / "root", tmp_path / "data", tmp_path / "log.txt", seed=0)
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "$ " in ln)
    pasted = shlex.split(line.split("$ ", 1)[1])
    assert pasted[0] != "python" and pasted[1:] == started[0][1:]
    monkeypatch.undo()  # the real subprocess.Popen again (run_main.subprocess is the module itself)
    # a fresh shell: no PYTHONPATH, the working folder the user is in
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    code = "import importlib.util as u; missing = [m for m in ('monai', 'fire', 'ignite') if u.find_spec(m) is None]; " \
           "assert not missing, missing"  # found without importing torch: fast
    proc = subprocess.run([pasted[0], "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_pasteable_python_is_relative_inside_the_working_folder(monkeypatch):
    exe = Path(sys.executable)
    monkeypatch.chdir(exe.parent.parent)
    assert run_main.pasteable_python() == f"{exe.parent.name}/{exe.name}"
    monkeypatch.chdir("/")
    assert Path(run_main.pasteable_python()).is_absolute() or exe.is_relative_to("/")
