"""``aptk flow``: deploy, list, show, update and delete flows on a server, and lint definitions offline.

``URL`` is the flows API of a server, e.g. ``http://127.0.0.1:5000/flows``; ``FILE`` a deployment document
(``title``, ``definition``, ``input_schema``, ``visible_to``, ``runnable_by``, ..., as in ``APTK_FLOWS_DIR``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from toolkit.cli import call_provider, make_client, output_options, parse_body, print_document

url_argument = click.argument("url")
token_option = click.option("--token", envvar="APTK_TOKEN", required=True, help="Bearer token ($APTK_TOKEN).")


def _document(path: str) -> Any:
    return parse_body(f"@{path}")


def _api(url: str, token: str, method: str, path: str = "", **kwargs: Any) -> Any:
    client = make_client(url.rstrip("/"), token)
    return call_provider(client._call, method, path, **kwargs)


@click.group()
def flow() -> None:
    """Deploy and manage flows (Globus Flows definitions served as action providers)."""


@flow.command()
@url_argument
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--id", "flow_id", default=None, help="The flow's id (its URL segment); default: the file's, else a "
              "new UUID.")
@token_option
@output_options
def deploy(url: str, file: str, flow_id: str | None, token: str) -> None:
    """Deploy the flow in FILE; prints the flow document."""
    document = _document(file)
    if flow_id is not None and isinstance(document, dict):
        document["id"] = flow_id
    print_document(_api(url, token, "POST", "", json=document))


@flow.command(name="list")
@url_argument
@token_option
@click.option("--limit", default=None, type=click.IntRange(1, 100), help="Flows per page asked of the server.")
@output_options
def list_flows(url: str, token: str, limit: int | None) -> None:
    """List the flows you may see (every page)."""
    flows: list[Any] = []
    marker = None
    while True:
        params: dict[str, Any] = {"limit": limit} if limit else {}
        if marker:
            params["marker"] = marker
        page = _api(url, token, "GET", "", params=params)
        flows.extend(page.get("flows", []))
        marker = page.get("marker")
        if not page.get("has_next_page") or not marker:
            break
    print_document(flows)


@flow.command()
@url_argument
@click.argument("flow_id")
@token_option
@output_options
def show(url: str, flow_id: str, token: str) -> None:
    """Show one flow."""
    print_document(_api(url, token, "GET", f"/{flow_id}"))


@flow.command()
@url_argument
@click.argument("flow_id")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@token_option
@output_options
def update(url: str, flow_id: str, file: str, token: str) -> None:
    """Replace what FILE gives of a flow (fields it leaves out are kept)."""
    document = _document(file)
    if isinstance(document, dict):
        document.pop("id", None)
    print_document(_api(url, token, "PUT", f"/{flow_id}", json=document))


@flow.command()
@url_argument
@click.argument("flow_id")
@token_option
@output_options
def delete(url: str, flow_id: str, token: str) -> None:
    """Delete a flow (refused while runs of it have not ended)."""
    print_document(_api(url, token, "DELETE", f"/{flow_id}"))


def lint_errors(document: Any) -> list[str]:
    """Every problem of a deployment document (or of a bare definition), as a deploy would name them."""
    from toolkit.errors import BadActionRequest

    from . import deployments
    from .language import DefinitionError, validate

    if not isinstance(document, dict):
        return ["the file must hold a JSON object (a flow deployment or a definition)"]
    deployment = "definition" in document
    definition = document["definition"] if deployment else document
    errors: list[str] = []
    schema = document.get("input_schema") if deployment else None
    if schema is not None:
        try:
            deployments.check_input_schema(schema)
        except BadActionRequest as exc:
            errors.append(exc.description)
            schema = None
    try:
        validate(definition, input_schema=schema)
    except DefinitionError as exc:
        errors.extend(f"definition: {e}" if deployment else e for e in exc.errors)
    if deployment and not errors:
        try:
            if "id" in document:
                deployments.check_id(document["id"])
            deployments.parse({k: v for k, v in document.items() if k != "id"})
        except BadActionRequest as exc:
            errors.append(exc.description)
    return errors


@flow.command()
@click.argument("file", type=click.Path(dir_okay=False))
def lint(file: str) -> None:
    """Check FILE (a deployment document or a bare definition) offline; exit 1 listing every error."""
    try:
        document = json.loads(Path(file).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None
    except ValueError as exc:
        raise click.ClickException(f"{file}: not JSON: {exc}") from None
    errors = lint_errors(document)
    if errors:
        for error in errors:
            click.echo(f"{file}: {error}", err=True)
        raise click.ClickException(f"{file}: {len(errors)} error{'s' if len(errors) > 1 else ''}")
    click.echo(f"{file}: valid")
