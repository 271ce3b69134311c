"""APTK_FLOWS_DIR: flows deployed from definition files at start-up, kept in sync with the files, and the same
in every process sharing the database."""

from __future__ import annotations

import json
import os

import pytest

from toolkit.errors import ConfigurationError
from toolkit.testing import close_app

from .conftest import NAME_SCHEMA, OTHER, PASS_SUCCEED, make_site, urn


def write(directory, name, document):
    path = directory / name
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def flows_dir(tmp_path):
    directory = tmp_path / "flows"
    directory.mkdir()
    write(directory, "greeter.json", {"title": "Greeter", "definition": PASS_SUCCEED, "input_schema": NAME_SCHEMA,
                                      "visible_to": ["public"], "runnable_by": ["all_authenticated_users"]})
    write(directory, "other.json", {"id": "named-in-file", "title": "Named", "definition": PASS_SUCCEED,
                                    "visible_to": [urn(OTHER)], "administered_by": [urn(OTHER)]})
    (directory / "notes.txt").write_text("not a flow")
    return directory


def test_files_are_deployed_at_start_with_ids_from_the_file_or_its_name(tmp_path, flows_dir):
    site = make_site(tmp_path, APTK_FLOWS_DIR=str(flows_dir))
    try:
        listed = site.session(OTHER).call("GET").json()["flows"]
        assert [(f["id"], f["deployed_from"], f["owner"]) for f in listed] == [
            ("greeter", "greeter.json", "APTK_FLOWS_DIR"), ("named-in-file", "other.json", "APTK_FLOWS_DIR")]
        assert site.flow("greeter", OTHER).introspect()["input_schema"] == NAME_SCHEMA
        refused = site.session(OTHER).call("PUT", "/named-in-file", json={"title": "x"})
        assert (refused.status_code, refused.json()["description"]) == (
            409, "Flow 'named-in-file' is deployed from the APTK_FLOWS_DIR file 'other.json'; change the file instead.")
        assert site.session(OTHER).call("DELETE", "/named-in-file").status_code == 409
        taken = site.session().call("POST", json={"id": "greeter", "title": "t", "definition": PASS_SUCCEED})
        assert taken.status_code == 409
    finally:
        close_app(site.app)


@pytest.mark.parametrize("content, message", [
    ("{nope", "APTK_FLOWS_DIR file 'broken.json' cannot be read as JSON: "),
    ("[1]", "APTK_FLOWS_DIR file 'broken.json' must hold a JSON object (a flow deployment)"),
    (json.dumps({"definition": PASS_SUCCEED}), "APTK_FLOWS_DIR file 'broken.json': title: is required."),
    (json.dumps({"title": "t", "definition": {"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "B"}}}}),
     "APTK_FLOWS_DIR file 'broken.json': definition: States.A.Next: \"B\" is not a state"),
    (json.dumps({"id": "a b", "title": "t", "definition": PASS_SUCCEED}),
     "APTK_FLOWS_DIR file 'broken.json': id: 'a b' is not a flow id"),
])
def test_a_broken_file_stops_start_up_naming_it(tmp_path, flows_dir, content, message):
    (flows_dir / "broken.json").write_text(content)
    with pytest.raises(ConfigurationError) as caught:
        make_site(tmp_path, APTK_FLOWS_DIR=str(flows_dir))
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_missing_directory_stops_start_up(tmp_path):
    with pytest.raises(ConfigurationError, match="APTK_FLOWS_DIR: .* is not a directory"):
        make_site(tmp_path, APTK_FLOWS_DIR=str(tmp_path / "nowhere"))


def test_changed_added_and_removed_files_are_followed(tmp_path, flows_dir):
    site = make_site(tmp_path, APTK_FLOWS_DIR=str(flows_dir), APTK_FLOWS_DIR_INTERVAL=0)
    try:
        api = site.session(OTHER)
        path = write(flows_dir, "greeter.json", {"title": "Greeter 2", "definition": PASS_SUCCEED,
                                                 "visible_to": ["public"]})
        os.utime(path, ns=(1, 10**18))  # a new mtime even on a coarse clock
        shown = api.call("GET", "/greeter").json()
        assert (shown["title"], shown["version"]) == ("Greeter 2", 2)
        assert site.flow("greeter", OTHER).introspect()["title"] == "Greeter 2"
        write(flows_dir, "added.json", {"title": "Added", "definition": PASS_SUCCEED, "visible_to": ["public"]})
        (flows_dir / "other.json").unlink()
        assert [f["id"] for f in api.call("GET").json()["flows"]] == ["added", "greeter"]
        # a file broken while serving: the flows as they were stay, and nothing fails
        (flows_dir / "added.json").write_text("{broken")
        assert [f["id"] for f in api.call("GET").json()["flows"]] == ["added", "greeter"]
    finally:
        close_app(site.app)


def test_processes_sharing_the_database_deploy_each_file_once(tmp_path, flows_dir):
    first = make_site(tmp_path, APTK_FLOWS_DIR=str(flows_dir))
    second = make_site(tmp_path, APTK_FLOWS_DIR=str(flows_dir))  # another worker, same data directory
    try:
        for site in (first, second):
            shown = site.session(OTHER).call("GET", "/greeter").json()
            assert shown["version"] == 1
    finally:
        close_app(first.app)
        close_app(second.app)
