"""How the ``aptk`` commands print a document: ``json`` (the default), ``text`` for people, ``unix`` for shell
pipelines, each after an optional JMESPath query (``--jmespath``).

``unix`` prints one line per value: ``path<TAB>value`` for the leaves of an object (paths joined with ``.``, list
items by index), a bare value for a scalar, list items of scalars tab-separated on one line; ``true``, ``false``
and ``null`` as in JSON. ``text`` prints an object as aligned ``field: value`` lines (nested values as compact
JSON) and a list as such blocks separated by blank lines.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

__all__ = ["FORMATS", "QueryError", "query", "render"]

FORMATS = ("json", "text", "unix")


class QueryError(ValueError):
    """The JMESPath expression is not valid."""


def query(document: Any, expression: str | None) -> Any:
    """``document`` filtered by a JMESPath ``expression`` (unchanged without one)."""
    if not expression:
        return document
    import jmespath
    from jmespath.exceptions import JMESPathError

    try:
        return jmespath.search(expression, document)
    except JMESPathError as exc:
        raise QueryError(f"{expression!r} is not a valid JMESPath expression: {exc}") from None


def render(document: Any, output_format: str = "json") -> str:
    if output_format == "unix":
        return "\n".join(_unix(document))
    if output_format == "text":
        return _text(document)
    return json.dumps(document, indent=2)


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _unix(document: Any, path: str = "") -> Iterator[str]:
    def line(value: str) -> str:
        return f"{path}\t{value}" if path else value

    if isinstance(document, dict):
        for key, value in document.items():
            yield from _unix(value, f"{path}.{key}" if path else str(key))
    elif isinstance(document, list):
        if all(not isinstance(item, (dict, list)) for item in document):
            yield line("\t".join(_scalar(item) for item in document))
        else:
            for index, item in enumerate(document):
                yield from _unix(item, f"{path}.{index}" if path else str(index))
    else:
        yield line(_scalar(document))


def _text(document: Any) -> str:
    if isinstance(document, list):
        return "\n\n".join(_text(item) for item in document)
    if not isinstance(document, dict):
        return _scalar(document)
    if not document:
        return ""
    width = max(len(str(key)) for key in document) + 1
    lines = []
    for key, value in document.items():
        shown = _scalar(value) if not isinstance(value, (dict, list)) else json.dumps(value)
        lines.append(f"{str(key) + ':':<{width}} {shown}")
    return "\n".join(lines)
