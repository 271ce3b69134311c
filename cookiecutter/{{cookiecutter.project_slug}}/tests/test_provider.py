{%- set fields = [] -%}
{%- for item in cookiecutter.input_fields.split(",") -%}
{%- set parts = item.strip().split(":") -%}
{%- set _ = fields.append([parts[0].strip(), (parts[1].strip() if parts|length > 1 and parts[1].strip() else "string")]) -%}
{%- endfor -%}
"""The provider's behaviour, through the real HTTP client wired to an in-process app (toolkit.testing)."""

import pytest

from toolkit.client import ClientError
from {{ cookiecutter.package_name }} import provider

{% set samples = {"string": '"example"', "integer": "1", "number": "1.5", "boolean": "True"} -%}
VALID = {
{%- for name, kind in fields %}
    "{{ name }}": {{ samples[kind] }},
{%- endfor %}
}


def test_a_valid_body_succeeds_with_its_details(aptk_client):
    status = aptk_client(provider).run(VALID, wait=True)
    assert status["status"] == "SUCCEEDED"
    assert status["details"] == {"received": VALID}


def test_a_body_without_its_required_fields_is_a_400(aptk_client):
    with pytest.raises(ClientError) as refused:
        aptk_client(provider).run({})
    assert refused.value.status == 400
    assert "{{ fields[0][0] }}" in refused.value.description


def test_an_unknown_field_is_a_400(aptk_client):
    with pytest.raises(ClientError) as refused:
        aptk_client(provider).run({**VALID, "not_a_field": 1})
    assert refused.value.status == 400


def test_the_description_says_what_it_is(aptk_client):
    description = aptk_client(provider).introspect()
    assert description["title"] == {{ cookiecutter.title | tojson }}
    assert description["synchronous"] is {{ "True" if cookiecutter.synchronous == "yes" else "False" }}
    assert description["input_schema"]["required"] == [{% for name, kind in fields %}"{{ name }}"{{ ", " if not loop.last }}{% endfor %}]


def test_someone_else_cannot_see_my_action(aptk_client):
    mine = aptk_client(provider)
    action = mine.run(VALID, wait=True)
    with pytest.raises(ClientError) as refused:
        mine.as_identity().status(action["action_id"])
    assert refused.value.status in (403, 404)
