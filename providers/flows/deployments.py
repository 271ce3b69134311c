"""Deployed flows: what was deployed (a validated definition, an input schema, who may see, run and administer it),
kept in a table of the provider's own beside the actions, so that every process serving the provider sees the
same flows."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class DeployedFlow:
    """One deployed flow. ``definition`` is the validated definition (what the language module's ``validate``
    returned); ``source`` is the definition document as deployed (JSON), which is what the API shows."""

    id: str
    title: str
    definition: Any
    input_schema: dict[str, Any]
    owner: str
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    subtitle: str | None = None
    description: str | None = None
    keywords: tuple[str, ...] = ()
    visible_to: tuple[str, ...] = ()
    runnable_by: tuple[str, ...] = ()
    administered_by: tuple[str, ...] = ()
    created: float = 0.0
    updated: float = 0.0
    version: int = 1
