"""Packaging: one import namespace, a console script, kernels selected as documented."""
import os
import subprocess
import sys
import zipfile

import pytest

from splitpoint import pyx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_installs_only_the_splitpoint_namespace(tmp_path):
    env = dict(os.environ, SPLITPOINT_NO_EXTENSIONS="1")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), ROOT], check=True, env=env, capture_output=True)
    wheel = next(p for p in os.listdir(tmp_path) if p.endswith(".whl"))
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"splitpoint"}, top
    for sub in ("firmware", "firmware/frontend", "hal", "hal/filters", "pyx", "boards", "commands"):
        assert any(n.startswith(f"splitpoint/{sub}/__init__.py") for n in names), sub
    assert "splitpoint/hal/ram.py" in names
    assert any(n.startswith("splitpoint/boards/") and n.endswith("/board.toml") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "splitpoint = splitpoint.cli:main" in zipfile.ZipFile(tmp_path / wheel).read(entry).decode()


def test_cli_version_and_help():
    out = subprocess.run([sys.executable, "-m", "splitpoint", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("splitpoint, version ")
    out = subprocess.run([sys.executable, "-m", "splitpoint", "--help"], capture_output=True, text=True, check=True)
    assert "consistent backups" in out.stdout


@pytest.mark.parametrize("name", pyx.KERNELS)
def test_compiled_kernel_is_selected_when_built(name):
    built = any(f.startswith(name + ".") and f.endswith(".so") for f in os.listdir(os.path.join(ROOT, "pyx")))
    if pyx.extensions_disabled() or not built:
        pytest.skip(f"{name}: compiled kernel not built (SPLITPOINT_NO_EXTENSIONS or no build)")
    assert not pyx.select(name).__name__.endswith("_py")


def test_no_extensions_forces_twins():
    code = "from splitpoint import pyx; print(all(v in ('python', 'missing') for v in pyx.implementations().values()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, SPLITPOINT_NO_EXTENSIONS="1"))
    assert out.stdout.strip() == "True"
