"""Distributions made on the fly: a package and its ``*.dist-info`` (metadata and entry points) in a directory
that goes on ``sys.path`` or ``PYTHONPATH``, as pip would have installed them."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping

PROVIDER_SOURCE = '''
from toolkit import ActionProvider

provider = ActionProvider(name="{name}", title="{title}", input_schema={{
    "type": "object", "required": ["word"], "additionalProperties": False,
    "properties": {{"word": {{"type": "string"}}}}}})


@provider.run
def shout(body, ctx):
    return {{"shouted": body["word"].upper()}}
'''


def provider_source(name: str, title: str = "Shout") -> str:
    """A small working provider module: it upper-cases ``word``."""
    return PROVIDER_SOURCE.format(name=name, title=title)


def make_distribution(root: Path, dist: str, modules: Mapping[str, str], providers: Mapping[str, str],
                      commands: Mapping[str, str] | None = None) -> Path:
    """Install distribution ``dist`` into ``root``: ``modules`` (name -> source), the ``aptk.providers`` entry
    points ``providers`` and the ``aptk.commands`` entry points ``commands`` (name -> 'module:attribute').
    Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in providers.items())
    text = f"[aptk.providers]\n{lines}"
    if commands:
        text += "\n[aptk.commands]\n" + "".join(f"{name} = {value}\n" for name, value in commands.items())
    (info / "entry_points.txt").write_text(text)
    return root
