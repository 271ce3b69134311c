"""Globus's public flow definitions run here unchanged but for their ActionUrls (where the providers exist here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.providers.conftest import USER, make_tree
from tests.providers.flows.test_engine import ORIGIN, make_site, run  # noqa: F401 - make_site is a fixture

DEFINITIONS = Path(__file__).parent / "definitions"

# Globus's hosted providers, and the bundled ones that take the same input.
PROVIDERS = {
    "https://actions.automate.globus.org/hello_world": f"{ORIGIN}/hello",
    "https://actions.automate.globus.org/transfer/transfer": f"{ORIGIN}/transfer",
    "https://actions.globus.org/transfer/transfer": f"{ORIGIN}/transfer",
    "https://transfer.actions.globus.org/transfer": f"{ORIGIN}/transfer",
    "https://actions.automate.globus.org/transfer/set_permission": f"{ORIGIN}/acl",
}


def pointed_here(name: str) -> dict[str, Any]:
    """The definition ``name`` with every ActionUrl replaced by this deployment's provider; nothing else changed."""
    definition = json.loads((DEFINITIONS / f"{name}.definition.json").read_text())
    for state in definition["States"].values():
        if "ActionUrl" in state:
            state["ActionUrl"] = PROVIDERS[state["ActionUrl"]]
    return definition


def test_every_definition_whose_providers_exist_here_is_one_of_those_run_below():
    runnable = set()
    for path in DEFINITIONS.glob("*.definition.json"):
        urls = {s["ActionUrl"] for s in json.loads(path.read_text())["States"].values() if "ActionUrl" in s}
        if urls and urls <= set(PROVIDERS):
            runnable.add(path.name.removesuffix(".definition.json"))
    assert runnable == set(INPUTS) | set(NOT_RUN), runnable ^ (set(INPUTS) | set(NOT_RUN))


NOT_RUN = {
    # Globus's hello_world takes a required_dependent_scope to ask for consent; the bundled hello does not.
    "automate-client-hello-consent": "hello here has no required_dependent_scope",
    "automate-client-failed-consent": "hello here has no required_dependent_scope",
}


TRANSFER_INPUT = {"source_endpoint_id": "src", "destination_endpoint_id": "dst",
                  "transfer_items": [{"source_path": "/in/", "destination_path": "/out/", "recursive": True}]}
SHARE_INPUT = {"input": {"source": {"id": "src", "path": "/in/"}, "destination": {"id": "shared", "path": "/out/"},
                         "recursive_tx": True, "principal": {"type": "identity", "id": USER}}}
INPUTS: dict[str, tuple[dict[str, Any], str | None]] = {
    # name: (input, the collection the files land in)
    "automate-client-hello-world": ({"input": {"echo_string": "hi", "sleep_time": 0}}, None),
    "automate-client-hello-world-run-as": ({"input": {"echo_string": "hi", "sleep_time": 0}}, None),
    "automate-client-single-transfer": (TRANSFER_INPUT, "dst"),
    "automate-client-multi-transfer": (
        {"source_endpoint_id": "src", "source_path": "/in/", "staging_endpoint_id": "shared",
         "staging_path": "/staging/", "destination_endpoint_id": "dst", "destination_path": "/out/"}, "dst"),
    "automate-client-hello-plus-transfer": (
        {"HelloInput": {"echo_string": "hi"},
         "TransferInput": {"source_endpoint_id": "src", "destination_endpoint_id": "dst", "source_path": "/in/",
                           "destination_path": "/out/", "recursive": True}}, "dst"),
    "trigger-examples-transfer": (
        {"input": {"source": {"id": "src", "path": "/in/"}, "destination": {"id": "dst", "path": "/out/"},
                   "recursive_tx": True}}, "dst"),
    "trigger-examples-transfer_share": (SHARE_INPUT, "shared"),
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_public_definition_runs_with_only_its_action_urls_changed(make_site, name):  # noqa: F811
    body, landed = INPUTS[name]
    site = make_site({"public": pointed_here(name)})
    make_tree(site.roots["src"], {"in/a.txt": b"alpha", "in/deeper/b.txt": b"beta"})
    status = run(site.flow("public"), body, timeout=60)
    assert status["status"] == "SUCCEEDED", status
    for entry in status["details"]["states"]:
        assert entry["status"] == "SUCCEEDED", entry
    if landed is not None:
        assert (site.roots[landed] / "out/deeper/b.txt").read_bytes() == b"beta"
