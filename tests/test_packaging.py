"""What the built distribution and the installed package show of themselves."""

import pydoc
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import toolkit

ROOT = Path(__file__).resolve().parent.parent


def test_dir_and_help_list_the_public_api():
    listed = dir(toolkit)
    assert set(toolkit.__all__) <= set(listed)
    text = pydoc.render_doc(toolkit, renderer=pydoc.plaintext)
    for name in ("ActionProvider", "Toolkit", "RunContext", "ActionFailed"):
        assert f"class {name}" in text
    assert "Register the run callback" in text  # docstrings of the lazily imported classes are reachable


def test_every_public_name_resolves():
    for name in toolkit.__all__:
        assert getattr(toolkit, name) is not None


@pytest.mark.slow
def test_wheel_keeps_templates_inside_the_toolkit(tmp_path):
    # Built from a copy, so that the build leaves nothing in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=600,
    )
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        packages = archive.read(top_level).decode().split()
    assert "templates" not in packages
    assert sorted(packages) == ["providers", "toolkit"]
    assert not any(n.startswith("templates/") for n in names)
    shipped = {n.removeprefix("toolkit/templates/") for n in names if n.startswith("toolkit/templates/")}
    expected = {str(p.relative_to(ROOT / "templates")) for p in (ROOT / "templates").rglob("*") if p.is_file()}
    assert shipped == expected
    # The project template of `aptk new` too, every file of it.
    template = ROOT / "cookiecutter"
    shipped = {n.removeprefix("toolkit/cookiecutter/") for n in names if n.startswith("toolkit/cookiecutter/")}
    assert shipped == {str(p.relative_to(template)) for p in template.rglob("*") if p.is_file()
                       and "__pycache__" not in p.parts}


def test_lazy_names_and_all_agree():
    assert sorted(toolkit.__all__) == sorted(toolkit._LOCATIONS)
