{%- set fields = [] -%}
{%- for item in cookiecutter.input_fields.split(",") -%}
{%- set parts = item.strip().split(":") -%}
{%- set _ = fields.append([parts[0].strip(), (parts[1].strip() if parts|length > 1 and parts[1].strip() else "string")]) -%}
{%- endfor -%}
"""The {{ cookiecutter.provider_name }} provider: what it says about itself, the input it takes, what it does."""

from __future__ import annotations

from typing import Any

from toolkit import ActionProvider, RunContext

provider = ActionProvider(
    name={{ cookiecutter.provider_name | tojson }},
    title={{ cookiecutter.title | tojson }},
    description={{ ("Runs " ~ cookiecutter.title ~ " on the input it is given.") | tojson }},
    input_schema={
        "type": "object",
        "required": [{% for name, kind in fields %}"{{ name }}"{{ ", " if not loop.last }}{% endfor %}],
        "additionalProperties": False,
        "properties": {
{%- for name, kind in fields %}
            "{{ name }}": {"type": "{{ kind }}"},
{%- endfor %}
        },
    },
    runnable_by=["all_authenticated_users"],
    synchronous={{ "True" if cookiecutter.synchronous == "yes" else "False" }},
)


@provider.run
def run(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Do the work. What this returns is the SUCCEEDED action's details; raise ``toolkit.ActionFailed(code,
    description)`` to end it FAILED instead."""
    ctx.log("received the input", fields=sorted(body))
    return {"received": body}
