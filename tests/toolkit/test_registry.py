"""Installed providers: the aptk.providers entry points, what a broken one does, and the toolkit's independence
from the bundled providers."""

from __future__ import annotations

import ast
import configparser
import uuid
from pathlib import Path

import pytest

from tests.distributions import make_distribution, provider_source
from toolkit import registry
from toolkit.registry import ProviderLoadError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path that distributions are installed into."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def unique(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def test_the_toolkit_never_imports_the_bundled_providers():
    offenders = []
    for path in (ROOT / "toolkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "providers"]
    assert offenders == []


def test_bundled_providers_register_like_any_other():
    from providers import bundled

    found = {item.name: item for item in registry.installed()}
    for prefix, provider in bundled():
        item = found[prefix.lstrip("/")]
        assert item.distribution == "action-provider-toolkit"
        assert item.load() is provider


def test_setup_cfg_registers_every_bundled_provider():
    """The bundled list and the entry points of setup.cfg must name the same providers at the same prefixes."""
    from providers import bundled

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = [line for line in config["options.entry_points"]["aptk.providers"].splitlines() if line.strip()]
    registered = {name.strip(): value.strip() for name, value in (line.split("=") for line in lines)}
    assert sorted(f"/{name}" for name in registered) == sorted(prefix for prefix, _ in bundled())


def test_an_installed_distribution_is_found_and_loaded(site):
    module = unique("shout")
    make_distribution(site, "shout-provider", {module: provider_source("shout")}, {"shout": f"{module}:provider"})
    item = next(i for i in registry.installed() if i.name == "shout")
    assert item.distribution == "shout-provider"
    ((prefix, provider),) = registry.load(["shout"])
    assert prefix == "/shout" and provider.title == "Shout"
    assert [p for p, _ in registry.load()].count("/shout") == 1


def test_a_factory_is_called(site):
    module = unique("factory")
    source = provider_source("shout") + "\n\ndef make():\n    return provider\n"
    make_distribution(site, "shout-factory", {module: source}, {"shout": f"{module}:make"})
    ((_, provider),) = registry.load(["shout"])
    assert provider.name == "shout"


def test_selecting_an_unknown_name_lists_what_is_installed():
    with pytest.raises(ProviderLoadError, match=r"no installed provider called 'nope' \(installed: .*hello"):
        registry.load(["nope"])


@pytest.mark.parametrize("source, attribute, problem", [
    ("import no_such_module_here\n", "provider", "ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("from toolkit import ActionProvider\nprovider = ActionProvider(title='B', input_schema={'type': 'objekt'})\n",
     "provider", "input_schema is not a valid JSON Schema"),
    ("from toolkit import ActionProvider\nprovider = ActionProvider(title='B', input_schema={'type': 'object'})\n",
     "provider", "has no run callback"),
    ("provider = 42\n", "provider", "is a int, not an ActionProvider"),
    ("x = 1\n", "provider", "AttributeError"),
])
def test_a_broken_provider_names_its_distribution_and_the_problem(site, source, attribute, problem):
    module = unique("broken")
    make_distribution(site, "broken-provider", {module: source}, {"broken": f"{module}:{attribute}"})
    with pytest.raises(ProviderLoadError) as caught:
        registry.load()
    message = str(caught.value)
    assert "'broken'" in message and "'broken-provider'" in message
    assert problem in message


def test_one_prefix_claimed_by_two_distributions_is_refused(site):
    first, second = unique("one"), unique("two")
    make_distribution(site / "a", "first-dist", {first: provider_source("echo")}, {"echo": f"{first}:provider"})
    make_distribution(site / "b", "second-dist", {second: provider_source("echo")}, {"echo": f"{second}:provider"})
    import sys

    sys.path[:0] = [str(site / "a"), str(site / "b")]
    try:
        with pytest.raises(ProviderLoadError, match=r"prefix /echo is claimed twice: .*'first-dist'.*'second-dist'"):
            registry.installed()
    finally:
        sys.path.remove(str(site / "a"))
        sys.path.remove(str(site / "b"))


def test_a_name_that_is_no_url_segment_is_refused(site):
    module = unique("bad")
    make_distribution(site, "bad-name", {module: provider_source("x")}, {"Bad/Name": f"{module}:provider"})
    with pytest.raises(ProviderLoadError, match="'bad-name'.*URL prefix"):
        registry.installed()
