"""The ``aptk`` command: serve providers, mint dev tokens, and call any action provider."""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import click

from .auth import load_dev_key, load_or_create_dev_key, mint_dev_token
from .client import ActionProviderClient, ClientError
from .documents import parse_duration
from .errors import ConfigurationError
from .extension import default_data_dir

_SIMPLE_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_seconds(text: str) -> float:
    match = _SIMPLE_DURATION.match(text.strip())
    if match:
        return int(match.group(1)) * _UNITS[match.group(2)]
    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise click.BadParameter(f"{exc}; or use a number with s, m, h or d (e.g. 12h)") from None


def _uuid(_ctx, _param, value):
    if value is None:
        return value
    values = value if isinstance(value, tuple) else (value,)
    try:
        checked = tuple(str(uuid.UUID(v.rsplit(":", 1)[-1])) for v in values)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a UUID") from None
    return checked if isinstance(value, tuple) else checked[0]


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_data_dir,
    show_default="$APTK_DATA_DIR or ~/.local/share/aptk",
    help="Where the database and the dev signing key live.",
)


@click.group()
@click.version_option(package_name="action-provider-toolkit")
def main() -> None:
    """Action Provider Toolkit: serve providers, mint dev tokens, call providers."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="gunicorn workers.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256), help="Threads per worker.")
@data_dir_option
def serve(host: str, port: int, workers: int, threads: int, data_dir: Path) -> None:
    """Serve every bundled provider (hello at /hello) with gunicorn."""
    from .server import create_app, serve as run_server
    from .store import SQLStore

    data_dir.mkdir(parents=True, exist_ok=True)
    load_or_create_dev_key(data_dir)
    config = {"APTK_DATA_DIR": str(data_dir)}
    # Create the tables once, before the workers start, and fail here if the settings are wrong.
    app = create_app(config)
    app.extensions["aptk"].runtime.store.create_schema()
    if isinstance(app.extensions["aptk"].runtime.store, SQLStore):
        app.extensions["aptk"].runtime.store.dispose()
    click.echo(f"aptk: data in {data_dir}; providers at http://{host}:{port}/", err=True)
    click.echo(f"aptk: get a token with: aptk token --data-dir {data_dir} --identity <uuid>", err=True)
    run_server(host=host, port=port, workers=workers, threads=threads, config=config)


@main.command()
@click.option("--identity", required=True, callback=_uuid, help="Identity UUID the token speaks for.")
@click.option("--group", "groups", multiple=True, callback=_uuid, help="A group UUID (repeatable).")
@click.option(
    "--scope", "scopes", multiple=True, help="A scope (repeatable); default: the scope of every bundled provider."
)
@click.option("--expires", default="1h", show_default=True, help="Lifetime: 3600, 30m, 12h, 7d or PT1H.")
@click.option("--username", default=None, help="A username to carry in the token.")
@data_dir_option
def token(identity: str, groups: tuple[str, ...], scopes: tuple[str, ...], expires: str, username: str | None,
          data_dir: Path) -> None:
    """Print a dev bearer token that `aptk serve --data-dir DIR` accepts."""
    try:
        key = load_dev_key(data_dir)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    if not scopes:
        from providers import bundled

        scopes = tuple(p.globus_auth_scope for _, p in bundled())
    click.echo(
        mint_dev_token(
            key, identity, groups=groups, scopes=scopes, expires_in=_duration_seconds(expires), username=username
        )
    )


# --- client commands ---------------------------------------------------------------------------------------

url_argument = click.argument("url")
token_option = click.option("--token", envvar="APTK_TOKEN", required=True, help="Bearer token ($APTK_TOKEN).")


def _client(url: str, token: str) -> ActionProviderClient:
    return ActionProviderClient(url, token)


def _print(document: Any) -> None:
    click.echo(json.dumps(document, indent=2))


def _calling(fn, *args, **kwargs) -> Any:
    try:
        return fn(*args, **kwargs)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"could not reach the provider: {exc}") from None


@main.command()
@url_argument
@token_option
@click.option("--body", required=True, help="The action body, as JSON (or @file.json).")
@click.option("--request-id", default=None)
@click.option("--label", default=None)
@click.option("--wait/--no-wait", default=False, help="Wait until the action completes.")
def run(url: str, token: str, body: str, request_id: str | None, label: str | None, wait: bool) -> None:
    """Start an action on the provider at URL."""
    text = Path(body[1:]).read_text() if body.startswith("@") else body
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--body") from None
    client = _client(url, token)
    status = _calling(client.run, document, request_id=request_id, label=label)
    if wait and status["status"] not in ("SUCCEEDED", "FAILED"):
        status = _calling(client.wait, status["action_id"])
    _print(status)


def _action_command(name: str, method: str, help_text: str) -> None:
    @main.command(name=name, help=help_text)
    @url_argument
    @click.argument("action_id")
    @token_option
    def command(url: str, action_id: str, token: str) -> None:
        _print(_calling(getattr(_client(url, token), method), action_id))


_action_command("status", "status", "Show an action's status.")
_action_command("wait", "wait", "Wait until an action completes, then show it.")
_action_command("cancel", "cancel", "Cancel an action.")
_action_command("release", "release", "Release a completed action.")
_action_command("resume", "resume", "Resume an INACTIVE action.")
_action_command("log", "log", "Show the first page of an action's log.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
