"""The project template (cookiecutter/) and `aptk new`: what a new provider project starts with, and that it
works as generated."""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from tests.e2e.support import free_port
from toolkit.cli import main

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def new(tmp_path: Path, *args: str) -> Path:
    result = CliRunner().invoke(main, ["new", *args, "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip())


def run_generated_tests(project: Path) -> subprocess.CompletedProcess:
    """The generated tests, run by this interpreter with the project's src/ importable."""
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests")],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)


def test_aptk_new_generates_a_complete_project(tmp_path):
    project = new(tmp_path, "Word Count", "--field", "text:string", "--field", "limit:integer")
    assert project == tmp_path / "word-count"
    files = sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file())
    assert files == ["README.md", "ci/run", "gunicorn.conf.py", "pyproject.toml", "src/word_count/__init__.py",
                     "src/word_count/app.py", "src/word_count/provider.py", "tests/test_provider.py"]
    assert os.access(project / "ci/run", os.X_OK)
    pyproject = (project / "pyproject.toml").read_text()
    assert 'dependencies = ["action-provider-toolkit>=0.1"]' in pyproject
    assert '[project.entry-points."aptk.providers"]\n"word_count" = "word_count.provider:provider"' in pyproject
    readme = (project / "README.md").read_text()
    assert "aptk serve --provider word_count" in readme and ".venv/bin/pytest" in readme
    assert "--body '{\"text\": \"example\", \"limit\": 1}'" in readme
    assert 'wsgi_app = "word_count.app:create_app()"' in (project / "gunicorn.conf.py").read_text()


@pytest.mark.parametrize("mode, synchronous", [("--synchronous", True), ("--asynchronous", False)])
def test_the_generated_tests_pass_as_generated(tmp_path, mode, synchronous):
    project = new(tmp_path, "Checksum Maker", mode, "--field", "path:string", "--field", "size:number",
                  "--field", "verify:boolean", "--title", "Checksums")
    provider = (project / "src/checksum_maker/provider.py").read_text()
    assert f"synchronous={synchronous}," in provider and 'title="Checksums"' in provider
    result = run_generated_tests(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


def test_the_generated_tests_can_fail(tmp_path):
    """They test the provider: break its callback and they say so."""
    project = new(tmp_path, "Echo")
    source = project / "src/echo/provider.py"
    source.write_text(source.read_text().replace('return {"received": body}', 'return {"received": {}}'))
    result = run_generated_tests(project)
    assert result.returncode == 1 and "1 failed" in result.stdout


def test_cookiecutter_itself_renders_the_same_project(tmp_path):
    made = new(tmp_path / "a", "Word Count", "--field", "text:string")
    subprocess.run([str(BIN / "cookiecutter"), "--no-input", "-o", str(tmp_path / "b"), str(ROOT / "cookiecutter"),
                    "project_name=Word Count", "input_fields=text:string"], check=True, capture_output=True,
                   timeout=60)
    compared = filecmp.dircmp(made, tmp_path / "b" / "word-count")
    assert compared.diff_files == [] and compared.left_only == [] and compared.right_only == []


@pytest.mark.parametrize("args, problem", [
    (["--field", "x:float"], "type 'float' is not one of boolean, integer, number, string"),
    (["--field", "not a name:string"], "the name must be a Python identifier"),
    (["--provider-name", "Has Space"], "provider name 'Has Space'"),
])
def test_answers_that_would_not_work_are_refused(tmp_path, args, problem):
    result = subprocess.run([str(BIN / "aptk"), "new", "Thing", *args, "-o", str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert problem in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "thing").exists()


def test_an_existing_directory_is_not_overwritten(tmp_path):
    new(tmp_path, "Echo")
    result = CliRunner().invoke(main, ["new", "Echo", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "already exists" in result.output


# --- the whole path: a fresh virtualenv, install, test, serve ------------------------------------------------

def fresh_venv(path: Path) -> Path:
    """A new virtualenv that also sees this one's packages (no download of the toolkit's dependencies)."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True, timeout=120)
    (site,) = path.glob("lib/python*/site-packages")
    (site / "_parent_env.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return path / "bin"


def wait_answering(url: str, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{what} exited: {process.stderr.read() if process.stderr else ''}"
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pytest.fail(f"{what} did not answer {url}")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


@pytest.mark.slow
def test_a_generated_project_installs_passes_its_tests_and_serves(tmp_path):
    project = new(tmp_path, "Word Count", "--field", "text:string")
    bin_dir = fresh_venv(tmp_path / "venv")
    subprocess.run([str(bin_dir / "pip"), "install", "--quiet", "--no-deps", "-e", str(ROOT), "-e", str(project)],
                   check=True, capture_output=True, timeout=600)
    tests = subprocess.run([str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                           capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0 and "5 passed" in tests.stdout, tests.stdout + tests.stderr

    env = {k: v for k, v in os.environ.items() if not k.startswith("APTK_")}
    data = tmp_path / "data"
    identity = str(uuid.uuid4())
    # gunicorn with the generated configuration serves the provider alone.
    port = free_port()
    gunicorn = subprocess.Popen([str(bin_dir / "python"), "-m", "gunicorn", "-c", "gunicorn.conf.py"], cwd=project,
                                env={**env, "APTK_DATA_DIR": str(data), "BIND": f"127.0.0.1:{port}", "WORKERS": "1"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_answering(f"http://127.0.0.1:{port}/word_count/", gunicorn, "gunicorn -c gunicorn.conf.py")
        assert requests.get(f"http://127.0.0.1:{port}/word_count/", timeout=5).json()["title"] == "Word Count"
    finally:
        stop(gunicorn)
    # aptk serve of the fresh environment finds it through its entry point, next to the bundled ones.
    port = free_port()
    served = subprocess.Popen([str(bin_dir / "aptk"), "serve", "--port", str(port), "--workers", "1",
                               "--data-dir", str(data), "--provider", "word_count", "--provider", "hello"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        wait_answering(f"http://127.0.0.1:{port}/", served, "aptk serve")
        token = subprocess.run([str(bin_dir / "aptk"), "token", "--data-dir", str(data), "--identity", identity],
                               env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        url = f"http://127.0.0.1:{port}/word_count"
        run = subprocess.run([str(bin_dir / "aptk"), "run", url, "--wait", "--body", '{"text": "hi"}'],
                             env={**env, "APTK_TOKEN": token}, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert '"received": {\n      "text": "hi"\n    }' in run.stdout
        other = subprocess.run([str(bin_dir / "aptk"), "token", "--data-dir", str(data), "--identity",
                                str(uuid.uuid4())], env=env, capture_output=True, text=True, check=True,
                               timeout=60).stdout.strip()
        check = subprocess.run([str(bin_dir / "aptk"), "check", url, "--other-token", other],
                               env={**env, "APTK_TOKEN": token}, capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "19 passed, 0 failed, 0 warning, 0 skipped" in check.stdout
    finally:
        stop(served)
