"""Commands added to ``aptk`` by installed distributions (entry-point group ``aptk.commands``)."""

from __future__ import annotations

from click.testing import CliRunner

from tests.distributions import make_distribution
from toolkit.cli import main

GREET = '''
import click
from toolkit.cli import output_options, print_document


@click.command()
@click.argument("who")
@output_options
def greet(who):
    """Say hello to WHO."""
    print_document({"greeting": f"hello {who}"})


not_a_command = 42
'''


def _install(tmp_path, monkeypatch, commands):
    root = make_distribution(tmp_path / "site", "greeter-dist", {"greeter": GREET}, {}, commands)
    monkeypatch.syspath_prepend(str(root))


def test_an_installed_command_is_listed_and_runs_with_the_output_options(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch, {"greet": "greeter:greet"})
    runner = CliRunner()
    listing = runner.invoke(main, ["--help"])
    assert listing.exit_code == 0 and "greet" in listing.output
    result = runner.invoke(main, ["greet", "world", "--jmespath", "greeting", "--format", "unix"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "hello world"


def test_an_installed_command_cannot_replace_a_builtin_one(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch, {"token": "greeter:greet"})
    result = CliRunner().invoke(main, ["token", "--help"])
    assert result.exit_code == 0
    assert "Say hello" not in result.output


def test_a_broken_command_names_its_distribution_and_the_problem(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch, {"missing": "greeter_gone:greet", "number": "greeter:not_a_command"})
    runner = CliRunner()
    missing = runner.invoke(main, ["missing"])
    assert missing.exit_code == 1
    assert "greeter-dist" in missing.output and "ModuleNotFoundError" in missing.output
    number = runner.invoke(main, ["number"])
    assert number.exit_code == 1
    assert "greeter-dist" in number.output and "not a click command" in number.output
