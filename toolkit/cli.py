"""The ``aptk`` command: serve providers, mint dev tokens, and call any action provider."""

from __future__ import annotations

import json
import re
import sys
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

if TYPE_CHECKING:
    from .client import ActionProviderClient

from .auth import load_dev_key, load_or_create_dev_key, mint_dev_token
from .auth.config import KINDS
from .documents import parse_duration
from .errors import ConfigurationError
from .settings import check_settings, default_data_dir, make_data_dir

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


COMMANDS_GROUP = "aptk.commands"
"""The entry-point group through which installed distributions add commands to ``aptk`` (a click command each;
the entry point's name is the command's name), e.g. in ``pyproject.toml``::

    [project.entry-points."aptk.commands"]
    flow = "my_package.cli:flow"
"""


class _Main(click.Group):
    """``aptk``: its own commands, then those installed distributions register in :data:`COMMANDS_GROUP`."""

    def _installed(self) -> dict[str, Any]:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP) if ep.name not in self.commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._installed()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        entry = self._installed().get(cmd_name)
        if entry is None:
            return None
        distribution = getattr(entry.dist, "name", None) or "an unknown distribution"
        try:
            loaded = entry.load()
        except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is reported the same way
            raise click.ClickException(
                f"the command {cmd_name!r} ({entry.value}) of {distribution} cannot be loaded: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(loaded, click.Command):
            raise click.ClickException(
                f"the command {cmd_name!r} ({entry.value}) of {distribution} is not a click command"
            )
        return loaded


@click.group(cls=_Main)
@click.version_option(package_name="action-provider-toolkit")
def main() -> None:
    """Action Provider Toolkit: serve providers, mint dev tokens, call providers."""


def _load_config_file(path: Path) -> dict[str, Any]:
    """APTK_* settings from a JSON or TOML file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror or exc}", param_hint="--config") from None
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path}: not UTF-8 text", param_hint="--config") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ImportError:
        raise click.BadParameter("TOML needs Python 3.11; use a .json file", param_hint="--config") from None
    except ValueError as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--config") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and k.startswith("APTK_") for k in data):
        raise click.BadParameter(f"{path}: expected a table of APTK_* settings", param_hint="--config")
    return data


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="gunicorn workers.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256), help="Threads per worker.")
@click.option("--provider", "providers", multiple=True, metavar="NAME",
              help="Serve only this installed provider (repeatable); default: every installed one.")
@click.option("--app", "app_spec", metavar="MODULE:APP",
              help="Serve this Flask app of your own (or app factory) instead, with the same server settings.")
@data_dir_option
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A JSON or TOML file of APTK_* settings.")
@click.option("--auth", type=click.Choice(KINDS), help="Token verifier (APTK_AUTH); default dev.")
@click.option("--issuer", help="Authorization server issuer URL (APTK_AUTH_ISSUER).")
@click.option("--audience", help="Accepted token audience (APTK_AUTH_AUDIENCE).")
@click.option("--jwks-uri", help="JWKS URL, if not discovered from the issuer (APTK_AUTH_JWKS_URI).")
@click.option("--introspection-url", help="RFC 7662 endpoint, if not discovered (APTK_AUTH_INTROSPECTION_URL).")
@click.option("--client-id", help="This provider's client id, for introspection (APTK_AUTH_CLIENT_ID).")
@click.option("--groups-claim", help="Claim holding group ids (APTK_AUTH_GROUPS_CLAIM); default groups.")
def serve(host: str, port: int, workers: int, threads: int, providers: tuple[str, ...], app_spec: str | None,
          data_dir: Path, config_file: Path | None, **auth: str | None) -> None:
    """Serve every installed provider (entry-point group aptk.providers), each at /NAME, with gunicorn.

    The client secret is read from APTK_AUTH_CLIENT_SECRET (or the --config file), never from the command line.
    """
    import os

    from .extension import find_toolkit
    from .registry import load as load_providers
    from .server import create_app, load_app, private_umask, serve as run_server

    if app_spec and providers:
        raise click.UsageError("--app serves your own app; --provider selects installed ones: give one of them.")
    private_umask()  # everything this server creates in the data directory is the user's alone
    config: dict[str, Any] = _load_config_file(config_file) if config_file else {}
    try:
        check_settings(config, source=str(config_file))
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    config.update({f"APTK_AUTH_{k.upper()}" if k != "auth" else "APTK_AUTH": v for k, v in auth.items() if v})
    config["APTK_DATA_DIR"] = str(data_dir)
    if app_spec:
        # An app of one's own reads its settings where the toolkit does, so they reach it through the environment.
        os.environ.update({k: str(v) for k, v in config.items() if v is not None})
    # Build the app once before the workers start: a wrong setting stops here, with its name.
    try:
        make_data_dir(data_dir)
        try:
            load_or_create_dev_key(data_dir)
        except OSError as exc:
            raise ConfigurationError(f"cannot write the dev signing key in {data_dir}: {exc.strerror or exc}") from None
        # Loaded once here: the workers, forked from this process, use them as they are.
        loaded = [] if app_spec else load_providers(providers)
        app = load_app(app_spec) if app_spec else create_app(config, providers=loaded)
        state = find_toolkit(app)
        if state is not None:
            _open_database(state.runtime.store)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    from .logs import check_format, start_up_line
    from .settings import setting

    try:
        json_lines = check_format(setting(config, "APTK_LOG_FORMAT")) == "json"
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    say = start_up_line if json_lines else (lambda text: click.echo(f"aptk: {text}", err=True))
    say(f"data in {data_dir}; providers at http://{host}:{port}/")
    if (config.get("APTK_AUTH") or "dev") == "dev":
        say(f"get a token with: aptk token --data-dir {data_dir} --identity <uuid>")
    run_server(host=host, port=port, workers=workers, threads=threads, config=config, providers=loaded,
               app=app_spec)


@main.command()
@click.option("--queue", "queues", multiple=True, metavar="NAME",
              help="The queue to take jobs from (repeatable); default APTK_QUEUE_NAME, else aptk.")
@click.option("--burst", is_flag=True, help="Stop once the queues are empty instead of waiting for more jobs.")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Callbacks this process runs at once (RQ workers in threads, sharing one database pool).")
@click.option("--redis-url", help="The Redis the API processes enqueue on (APTK_REDIS_URL).")
@click.option("--provider", "providers", multiple=True, metavar="NAME",
              help="Run callbacks of this installed provider only (repeatable); default: every installed one.")
@click.option("--app", "app_spec", metavar="MODULE:APP",
              help="Run the callbacks of this Flask app of your own (the one `aptk serve --app` serves).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Serve this worker's Prometheus metrics (callbacks, queue depth) at http://HOST:PORT/metrics.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="The address --metrics-port listens on (0.0.0.0: every interface; the metrics carry no secrets).")
@data_dir_option
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A JSON or TOML file of APTK_* settings (the API processes' own).")
def worker(queues: tuple[str, ...], burst: bool, concurrency: int, redis_url: str | None, providers: tuple[str, ...],
           app_spec: str | None, metrics_port: int | None, metrics_host: str, data_dir: Path,
           config_file: Path | None) -> None:
    """Run action callbacks from the queue (RQ on Redis), for API processes served with APTK_EXECUTOR=rq.

    Start any number, on any host that reaches the same database and Redis; each runs --concurrency callbacks
    at a time.
    """
    import logging
    import os

    from .extension import find_toolkit
    from .registry import load as load_providers
    from .rq_executor import work
    from .server import create_app, load_app, private_umask
    from .settings import setting

    if app_spec and providers:
        raise click.UsageError("--app runs your own app's callbacks; --provider selects installed ones: give one.")
    private_umask()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config: dict[str, Any] = _load_config_file(config_file) if config_file else {}
    try:
        check_settings(config, source=str(config_file))
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    config["APTK_EXECUTOR"] = "rq"
    if redis_url:
        config["APTK_REDIS_URL"] = redis_url
    config["APTK_DATA_DIR"] = str(data_dir)
    if metrics_port:
        config["APTK_METRICS"] = "true"
    if app_spec:
        os.environ.update({k: str(v) for k, v in config.items() if v is not None})
    try:
        make_data_dir(data_dir)
        app = load_app(app_spec) if app_spec else create_app(config, providers=load_providers(providers))
        state = find_toolkit(app)
        if state is None:
            raise ConfigurationError(f"--app {app_spec!r} holds no action providers")
        names = list(queues) or [str(setting(app.config, "APTK_QUEUE_NAME", "aptk"))]
        click.echo(f"aptk worker: running callbacks from queue {', '.join(names)}", err=True)
        server = None
        stop = threading.Event()
        if metrics_port:
            from . import metrics

            try:
                server = metrics.serve_worker_metrics(metrics_port, metrics_host, state.runtime.executor, stop)
            except OSError as exc:
                raise ConfigurationError(f"--metrics-port {metrics_port}: {exc.strerror or exc}") from None
            click.echo(f"aptk worker: metrics at http://{metrics_host}:{metrics_port}/metrics", err=True)
        try:
            with app.app_context():
                work(state.runtime, queues=names, burst=burst, concurrency=concurrency)
        finally:
            stop.set()
            if server is not None:
                server.shutdown()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


def _open_database(store: Any) -> None:
    """Connect once and create the tables, so that a database that cannot be used stops start-up."""
    import sqlalchemy as sa

    try:
        store.create_schema()
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigurationError(f"cannot open database at {store.url.render_as_string(hide_password=True)}: "
                                 f"{reason}") from None
    finally:
        store.dispose()


@main.command()
@click.option("--identity", callback=_uuid, help="Dev token: the identity UUID it speaks for.")
@click.option("--group", "groups", multiple=True, callback=_uuid, help="Dev token: a group UUID (repeatable).")
@click.option(
    "--scope", "scopes", multiple=True, help="A scope (repeatable); dev default: the scope of every installed provider."
)
@click.option("--expires", default="1h", show_default=True, help="Dev token lifetime: 3600, 30m, 12h, 7d or PT1H.")
@click.option("--username", default=None, help="Dev token: a username to carry.")
@data_dir_option
@click.option("--client-id", help="Fetch a client-credentials token from an authorization server as this client.")
@click.option("--client-secret", envvar="APTK_CLIENT_SECRET", help="The client's secret ($APTK_CLIENT_SECRET).")
@click.option("--issuer", help="The authorization server (its token endpoint is discovered).")
@click.option("--token-url", help="The token endpoint, instead of --issuer.")
@click.option("--resource", help="RFC 8707 resource (the audience) to ask the token for.")
def token(identity: str | None, groups: tuple[str, ...], scopes: tuple[str, ...], expires: str,
          username: str | None, data_dir: Path, client_id: str | None, client_secret: str | None,
          issuer: str | None, token_url: str | None, resource: str | None) -> None:
    """Print a bearer token: a dev token for `aptk serve --data-dir DIR`, or with --client-id, an access token
    from an authorization server (client-credentials grant)."""
    if client_id:
        click.echo(_client_credentials_token(client_id, client_secret, issuer, token_url, scopes, resource))
        return
    if not identity:
        raise click.UsageError("Give --identity <uuid> for a dev token, or --client-id to fetch one.")
    try:
        key = load_dev_key(data_dir)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    if not scopes:
        from .registry import load as load_providers

        try:
            scopes = tuple(p.globus_auth_scope for _, p in load_providers())
        except ConfigurationError as exc:
            raise click.ClickException(f"{exc}; or name the scopes with --scope") from None
    click.echo(
        mint_dev_token(
            key, identity, groups=groups, scopes=scopes, expires_in=_duration_seconds(expires), username=username
        )
    )


def _client_credentials_token(client_id: str, client_secret: str | None, issuer: str | None,
                              token_url: str | None, scopes: tuple[str, ...], resource: str | None) -> str:
    from .auth.client_credentials import TokenRequestError, client_credentials_token

    if not client_secret:
        raise click.UsageError("--client-id needs the client secret in $APTK_CLIENT_SECRET (or --client-secret).")
    if not token_url and not issuer:
        raise click.UsageError("--client-id needs --issuer or --token-url.")
    try:
        answer = client_credentials_token(client_id, client_secret, issuer=issuer, token_url=token_url,
                                          scopes=scopes, resource=resource)
    except TokenRequestError as exc:
        raise click.ClickException(str(exc)) from None
    return answer["access_token"]


# --- scaffolding ---------------------------------------------------------------------------------------------

TEMPLATE = Path(__file__).resolve().parent / "cookiecutter"
"""The project template `aptk new` renders (the repository's cookiecutter/ directory, shipped in the package)."""


@main.command()
@click.argument("name")
@click.option("--provider-name", help="The provider's name and URL prefix; default: NAME in lower case, with _.")
@click.option("--title", help="The provider's title; default: NAME.")
@click.option("--synchronous/--asynchronous", default=False, show_default=True,
              help="Whether /run answers with the finished action.")
@click.option("--field", "fields", multiple=True, metavar="NAME:TYPE",
              help="An input field (repeatable; string, integer, number, boolean); default message:string.")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where the project directory is created.")
@click.option("--interactive", is_flag=True, help="Ask every question of the template, with these as defaults.")
def new(name: str, provider_name: str | None, title: str | None, synchronous: bool, fields: tuple[str, ...],
        output_dir: Path, interactive: bool) -> None:
    """Create a provider project NAME from the toolkit's cookiecutter template: a package, tests that pass,
    a pyproject, a README, gunicorn.conf.py and a CI script."""
    try:
        from cookiecutter.exceptions import CookiecutterException, FailedHookException
        from cookiecutter.main import cookiecutter
    except ImportError:
        raise click.ClickException(
            "aptk new needs the cookiecutter library: pip install 'action-provider-toolkit[scaffold]'"
        ) from None
    context: dict[str, Any] = {"project_name": name, "synchronous": "yes" if synchronous else "no"}
    if provider_name:
        context["provider_name"] = provider_name
    if title:
        context["title"] = title
    if fields:
        context["input_fields"] = ",".join(fields)
    import logging

    logging.getLogger("cookiecutter").setLevel(logging.CRITICAL)  # its tracebacks; the hook says what is wrong
    try:
        created = cookiecutter(str(TEMPLATE), no_input=not interactive, extra_context=context,
                               output_dir=str(output_dir))
    except FailedHookException:
        raise click.ClickException("the template refused these answers (see above)") from None
    except (CookiecutterException, OSError) as exc:
        raise click.ClickException(str(exc).removeprefix("Error: ")) from None
    click.echo(created)
    click.echo(f"aptk: next: cd {created} && python3 -m venv .venv && .venv/bin/pip install -e '.[test]' "
               "&& .venv/bin/pytest", err=True)


# --- client commands ---------------------------------------------------------------------------------------

url_argument = click.argument("url")
token_option = click.option("--token", envvar="APTK_TOKEN", default=None,
                            help="Bearer token ($APTK_TOKEN); default: your `aptk login` session's token for the "
                                 "provider's scope.")


def _client(url: str, token: str | None) -> "ActionProviderClient":
    """A client with ``token``, or else acting as the logged-in person (see :mod:`toolkit.session`)."""
    from .client import ActionProviderClient
    from .session import SessionError

    if token:
        return ActionProviderClient(url, token)
    try:
        return ActionProviderClient.from_session(url)
    except SessionError as exc:
        raise _NoSession(f"{exc} (or give --token or $APTK_TOKEN)") from None


def _session_token(url: str, token: str | None) -> str | Callable[[], str]:
    """``token``, or a function returning the logged-in person's current access token for the provider at
    ``url`` (refreshed as it nears expiry)."""
    from .session import SessionError, provider_auth

    if token:
        return token
    try:
        auth = provider_auth(url)
        auth.session.access_token(auth.scope)  # usable now, or the command stops here saying why
    except SessionError as exc:
        raise _NoSession(f"{exc} (or give --token or $APTK_TOKEN)") from None
    return lambda: auth.session.access_token(auth.scope)


def output_options(fn: Any) -> Any:
    """``--format`` and ``--jmespath`` for a command that prints a document (read by :func:`_print`)."""
    import functools

    from .formatting import FORMATS

    @click.option("--format", "output_format", type=click.Choice(FORMATS), default=None,
                  help="Output: json (default), text for people, unix for shell pipelines (see README).")
    @click.option("--jmespath", "jmespath_expr", metavar="EXPR", default=None,
                  help="Print only what this JMESPath expression selects from the document.")
    @functools.wraps(fn)
    def command(*args: Any, output_format: str | None, jmespath_expr: str | None, **kwargs: Any) -> Any:
        meta = click.get_current_context().meta
        meta["aptk.format"], meta["aptk.jmespath"] = output_format, jmespath_expr
        return fn(*args, **kwargs)

    return command


def _output_chosen() -> bool:
    meta = click.get_current_context().meta
    return bool(meta.get("aptk.format") or meta.get("aptk.jmespath"))


def _print(document: Any) -> None:
    from .formatting import QueryError, query, render

    meta = click.get_current_context().meta
    try:
        selected = query(document, meta.get("aptk.jmespath"))
    except QueryError as exc:
        raise click.BadParameter(str(exc), param_hint="--jmespath") from None
    click.echo(render(selected, meta.get("aptk.format") or "json"))


# Exit codes of the client commands (click itself exits 2 on a usage error).
EXIT_FAILED = 1
"""The action ended FAILED (``--wait``, ``aptk wait``)."""
EXIT_USAGE = 2
EXIT_INACTIVE = 3
"""The action is INACTIVE: it waits for someone to act (the reason and resolution are printed)."""
EXIT_TIMEOUT = 4
"""``--timeout`` passed while the action was still ACTIVE; the action itself goes on."""
EXIT_REFUSED = 5
"""The provider answered with an error (4xx, 5xx), or with something that is not an action provider's answer."""
EXIT_UNREACHABLE = 6
"""No answer: connection refused, unknown host, network timeout."""
EXIT_SESSION = 7
"""No token given and no usable ``aptk login`` session for the provider (the message says which login to run),
or a sign-in, refresh or logout that went wrong."""
EXIT_INTERRUPTED = 130
"""Ctrl-C while waiting (the action goes on)."""


class _Exit(click.ClickException):
    """The command ends with a message; each subclass carries its exit code, as Click's own exceptions do."""


class _Failed(_Exit):
    exit_code = EXIT_FAILED


class _Inactive(_Exit):
    exit_code = EXIT_INACTIVE


class _TimedOut(_Exit):
    exit_code = EXIT_TIMEOUT


class _Refused(_Exit):
    exit_code = EXIT_REFUSED


class _Unreachable(_Exit):
    exit_code = EXIT_UNREACHABLE


class _Interrupted(_Exit):
    exit_code = EXIT_INTERRUPTED


class _NoSession(_Exit):
    exit_code = EXIT_SESSION


def _calling(fn, *args, **kwargs) -> Any:
    from .client import ClientError, ProviderUnreachable
    from .session import SessionError

    try:
        return fn(*args, **kwargs)
    except ClientError as exc:
        raise _Refused(str(exc)) from None
    except ProviderUnreachable as exc:
        raise _Unreachable(str(exc)) from None
    except SessionError as exc:  # the session's token could not be refreshed
        raise _NoSession(str(exc)) from None


def _body(value: str) -> Any:
    if value.startswith("@"):
        try:
            value = Path(value[1:]).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {getattr(exc, 'strerror', None) or exc}",
                                     param_hint="--body") from None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--body") from None


def _timeout(_ctx, _param, value: str) -> float | None:
    seconds = _duration_seconds(value)
    return seconds or None


timeout_option = click.option(
    "--timeout", default="5m", show_default=True, callback=_timeout,
    help="With waiting: give up after this long (90, 30s, 10m, 2h, PT1H; 0 waits without limit).",
)


def _wait_and_exit(client: "ActionProviderClient", url: str, status: dict[str, Any], timeout: float | None) -> None:
    """Wait for ``status``'s action to complete or pause, print its status, exit with its outcome."""
    from .client import COMPLETED, WaitTimeout

    if not isinstance(status, dict) or not isinstance(status.get("action_id"), str):
        raise _Refused(f"{url} answered with something that is not an action's status")
    action_id = status["action_id"]
    show = _Progress(action_id) if sys.stderr.isatty() else None
    if status.get("status") not in (*COMPLETED, "INACTIVE"):
        try:
            status = _calling(client.wait, action_id, timeout=timeout, until=(*COMPLETED, "INACTIVE"),
                              max_interval=2 if show else 5, progress=show)
        except WaitTimeout as exc:
            status = exc.status
        except KeyboardInterrupt:
            raise _Interrupted(f"stopped waiting; action {action_id} goes on (aptk wait {url} {action_id})") from None
        finally:
            if show:
                show.done()
    _print(status)
    outcome = status.get("status")
    reported = status.get("details")
    details: dict[str, Any] = reported if isinstance(reported, dict) else {}
    reason = ": ".join(str(details[k]) for k in ("code", "description") if details.get(k))
    if outcome == "SUCCEEDED":
        return
    if outcome == "FAILED":
        raise _Failed(f"action {action_id} FAILED" + (f": {reason}" if reason else ""))
    if outcome == "INACTIVE":
        todo = []
        if details.get("resolution_url"):
            todo.append(f"resolve it at {details['resolution_url']}")
        if details.get("required_scope"):
            todo.append(f"get a token with scope {details['required_scope']}")
        todo.append(f"then: aptk resume {url} {action_id}")
        raise _Inactive(f"action {action_id} is INACTIVE" + (f" ({reason})" if reason else "") + "; "
                        + ", ".join(todo))
    raise _TimedOut(f"action {action_id} still {outcome} after {timeout:g} s; it goes on (aptk wait {url} "
                    f"{action_id})")


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count} B"  # pragma: no cover


def progress_line(action_id: str, status: dict[str, Any], elapsed: float) -> str:
    """The line shown while waiting: status, display_status, a transfer's files and bytes, elapsed seconds."""
    text = f"aptk: {action_id} {status.get('status')}"
    if status.get("display_status"):
        text += f" ({status['display_status']})"
    reported = status.get("details")
    details: dict[str, Any] = reported if isinstance(reported, dict) else {}
    done, total, moved = details.get("files_transferred"), details.get("files"), details.get("bytes_transferred")
    if isinstance(done, int) and not isinstance(done, bool):
        text += f", {done}/{total} files" if isinstance(total, int) and total else f", {done} files"
    if isinstance(moved, (int, float)) and not isinstance(moved, bool):
        text += f", {_size(moved)}"
    return f"{text}, {elapsed:.0f} s"


class _Progress:
    """One line on the terminal, rewritten at every poll: status, display_status, elapsed time."""

    def __init__(self, action_id: str) -> None:
        self.action_id = action_id
        self.shown = False

    def __call__(self, status: dict[str, Any], elapsed: float) -> None:
        click.echo(f"\r\x1b[K{progress_line(self.action_id, status, elapsed)}", nl=False, err=True)
        self.shown = True

    def done(self) -> None:
        if self.shown:
            click.echo("\r\x1b[K", nl=False, err=True)


principal_option_help = "A principal URN (urn:globus:auth:identity:<uuid> or urn:globus:groups:id:<uuid>; repeatable)"


@main.command()
@url_argument
@token_option
@click.option("--body", required=True, help="The action body, as JSON (or @file.json).")
@click.option("--request-id", default=None, help="Your id of this request: the same id and body again is answered "
              "with the same action, not a second one.")
@click.option("--label", default=None, help="A label for the action (1-64 characters).")
@click.option("--monitor-by", "monitor_by", multiple=True, metavar="URN",
              help=f"Who else may see the action. {principal_option_help}.")
@click.option("--manage-by", "manage_by", multiple=True, metavar="URN",
              help=f"Who else may cancel and release it. {principal_option_help}.")
@click.option("--deadline", default=None, help="When the action must have completed (ISO 8601 date-time).")
@click.option("--release-after", default=None, help="How long the provider keeps it once complete (ISO 8601 "
              "duration, e.g. P7D).")
@click.option("--wait/--no-wait", default=False,
              help="Wait until the action completes or pauses; the exit code tells which (see README).")
@timeout_option
@output_options
def run(url: str, token: str | None, body: str, request_id: str | None, label: str | None, monitor_by: tuple[str, ...],
        manage_by: tuple[str, ...], deadline: str | None, release_after: str | None, wait: bool,
        timeout: float | None) -> None:
    """Start an action on the provider at URL."""
    document = _body(body)
    client = _client(url, token)
    status = _calling(client.run, document, request_id=request_id, label=label, monitor_by=monitor_by or None,
                      manage_by=manage_by or None, deadline=deadline, release_after=release_after)
    if wait:
        _wait_and_exit(client, url, status, timeout)
    else:
        _print(status)


@main.command()
@url_argument
@click.option("--token", envvar="APTK_TOKEN", default=None,
              help="Bearer token ($APTK_TOKEN); a provider visible to the public needs none.")
@output_options
def introspect(url: str, token: str | None) -> None:
    """Show the provider's description: title, scope, who may run it, its input schema."""
    from .client import ActionProviderClient

    _print(_calling(ActionProviderClient(url, token).introspect))  # anonymous without a token: no session needed


@main.command()
@url_argument
@click.argument("action_id")
@token_option
@timeout_option
@output_options
def wait(url: str, action_id: str, token: str | None, timeout: float | None) -> None:
    """Wait until an action completes or pauses, show it; the exit code tells which (see README)."""
    client = _client(url, token)
    _wait_and_exit(client, url, _calling(client.status, action_id), timeout)


def _action_command(name: str, method: str, help_text: str) -> None:
    @main.command(name=name, help=help_text)
    @url_argument
    @click.argument("action_id")
    @token_option
    @output_options
    def command(url: str, action_id: str, token: str | None) -> None:
        _print(_calling(getattr(_client(url, token), method), action_id))


_action_command("status", "status", "Show an action's status.")
_action_command("cancel", "cancel", "Cancel an action.")
_action_command("release", "release", "Release a completed action.")
_action_command("resume", "resume", "Resume an INACTIVE action.")


@main.command()
@url_argument
@click.argument("action_id")
@token_option
@click.option("--limit", type=click.IntRange(1), default=10, show_default=True, help="Entries per page.")
@click.option("--all", "every_page", is_flag=True, help="Fetch every page, not only the first.")
@output_options
def log(url: str, action_id: str, token: str | None, limit: int, every_page: bool) -> None:
    """Show an action's log: its first page, or with --all every entry."""
    client = _client(url, token)
    page = _calling(client.log, action_id, limit=limit)
    if every_page:
        entries = list(page.get("entries") or [])
        while page.get("has_next_page") and page.get("marker"):
            page = _calling(client.log, action_id, limit=limit, marker=page["marker"])
            entries += page.get("entries") or []
        page = {"entries": entries, "limit": limit, "has_next_page": False}
    _print(page)


@main.command(name="list")
@url_argument
@token_option
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["ACTIVE", "INACTIVE", "SUCCEEDED", "FAILED"], case_sensitive=False),
              help="Only actions in this state (repeatable).")
@click.option("--role", "roles", multiple=True, type=click.Choice(["creator_id", "monitor_by", "manage_by"]),
              help="Actions where you have this role (repeatable); default creator_id.")
@click.option("--page-size", type=click.IntRange(1), default=None, help="Actions per request.")
@click.option("--max", "most", type=click.IntRange(1), default=None, help="Stop after this many actions.")
@output_options
def list_actions(url: str, token: str | None, statuses: tuple[str, ...], roles: tuple[str, ...],
                 page_size: int | None, most: int | None) -> None:
    """List your actions at the provider, oldest first (all pages): one JSON status per line, or with --format or
    --jmespath, one document (a list) in that format."""
    client = _client(url, token)
    collected: list[dict[str, Any]] = []
    stream = not _output_chosen()

    def each() -> None:
        for status in client.actions(status=[s.upper() for s in statuses], roles=roles, page_size=page_size):
            if most is not None and len(collected) >= most:
                return
            if stream:
                click.echo(json.dumps(status))
            collected.append(status)

    _calling(each)
    if not stream:
        _print(collected)


@main.command()
@url_argument
@token_option
@click.option("--other-token", envvar="APTK_OTHER_TOKEN", default=None,
              help="A second identity's token ($APTK_OTHER_TOKEN), for the checks across identities.")
@click.option("--body", "body_text", default=None,
              help="A valid action body, as JSON (or @file.json); default: generated from the input schema.")
@click.option("--format", "output_format", type=click.Choice(["text", "json", "junit"]), default="text",
              show_default=True, help="The report: readable text, JSON, or JUnit XML for CI.")
@click.option("--wait", "wait_seconds", default="30s", show_default=True,
              help="How long to wait for the checks' action to complete (for release).")
def check(url: str, token: str | None, other_token: str | None, body_text: str | None, output_format: str,
          wait_seconds: str) -> None:
    """Check that the provider at URL follows the Action Provider API: its documents, codes and errors.

    Exit code 0 when every required check passes (warnings are only recommended), 1 when one fails.
    """
    from .conformance import Checker, render_json, render_junit, render_text

    body = _body(body_text) if body_text is not None else None
    if body is not None and not isinstance(body, dict):
        raise click.BadParameter("the body must be a JSON object", param_hint="--body")
    checker = Checker(url, _session_token(url, token), other_token=other_token, body=body, wait=_duration_seconds(wait_seconds))
    results = _calling(checker.run)
    if output_format == "json":
        _print(render_json(url, results))
    elif output_format == "junit":
        click.echo(render_junit(url, results))
    else:
        click.echo(render_text(url, results))
    if any(r.outcome == "failed" for r in results):
        raise _Failed(f"{url} does not conform: " + ", ".join(r.name for r in results if r.outcome == "failed"))


# --- acting as a person: aptk login, whoami, logout (toolkit.session) ----------------------------------------


def _session_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from .session import SessionError

    try:
        return fn(*args, **kwargs)
    except SessionError as exc:
        raise _NoSession(str(exc)) from None


@main.command()
@click.option("--issuer", help="The authorization server (its issuer URL); default: that of your only session.")
@click.option("--client-id", help="aptk's client id there: a public client allowed http://127.0.0.1/ redirects; "
              "default: that of your session at the issuer.")
@click.option("--scope", "scopes", multiple=True, help="A scope to consent to (repeatable).")
@click.option("--provider", "providers", multiple=True, metavar="URL",
              help="A provider you will call: its scope (globus_auth_scope) is asked for (repeatable).")
@click.option("--no-browser", is_flag=True,
              help="Print the URL to open instead of opening a browser, then read back the address it ends on.")
@click.option("--timeout", default="5m", show_default=True, callback=_timeout,
              help="How long to wait for the browser to come back.")
def login(issuer: str | None, client_id: str | None, scopes: tuple[str, ...], providers: tuple[str, ...],
          no_browser: bool, timeout: float | None) -> None:
    """Sign in as yourself (OAuth2 authorization code with PKCE, RFC 8252) and store the session, so that aptk
    calls providers as you. Scopes consented to before at the same issuer are asked again."""
    from .session import Login, SessionStore, can_open_browser, provider_scope

    store = SessionStore()
    previous = _session_call(store.load, issuer) if issuer else None
    if issuer is None:
        stored = _session_call(store.sessions)
        if len(stored) != 1:
            raise click.UsageError("give --issuer (the authorization server's URL)" + (
                ": you are logged in at " + ", ".join(s.issuer for s in stored) if stored else ""))
        previous = stored[0]
        issuer = previous.issuer
    client_id = client_id or (previous.client_id if previous else None)
    if not client_id:
        raise click.UsageError(f"give --client-id: the id of aptk's public client at {issuer}")
    wanted = [*(_session_call(provider_scope, url) for url in providers), *scopes]
    if previous is not None and previous.client_id == client_id:
        wanted = [*previous.scopes, *wanted]
    attempt = _session_call(Login, issuer, client_id, wanted, store=store)
    browser = not no_browser and can_open_browser()

    def paste() -> str:
        click.echo("Address: ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line.strip():
            raise _NoSession("nothing was pasted; nothing was stored")
        return line

    def show(text: str) -> None:
        click.echo(text, err=True)

    session = _session_call(attempt.run, paste=None if browser else paste, show=show,
                            timeout=timeout or 3600.0)
    who = session.describe()
    click.echo(f"aptk: logged in at {session.issuer} as {who.get('name') or who.get('sub') or 'unknown'}; "
               f"scopes: {' '.join(session.scopes)}", err=True)


@main.command()
@click.option("--issuer", help="The session to show; default: your only one.")
@output_options
def whoami(issuer: str | None) -> None:
    """Show who you are logged in as: identity, issuer, scopes, and when the tokens expire (never the tokens)."""
    from .session import SessionStore

    session = _session_call(SessionStore().find, issuer)
    _print(_session_call(session.describe))


@main.command()
@click.option("--issuer", help="The session to end; default: your only one.")
def logout(issuer: str | None) -> None:
    """Revoke your session's tokens at the authorization server (RFC 7009) and delete them."""
    from .session import SessionStore

    session = _session_call(SessionStore().find, issuer)
    problems = session.logout()
    if problems:
        raise _NoSession(f"logged out of {session.issuer} here, but " + "; ".join(problems))
    click.echo(f"aptk: logged out of {session.issuer}; its tokens were revoked and deleted", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


# What commands of other distributions (the ``aptk.commands`` group) use to behave like aptk's own.
print_document = _print
"""Print a document with the ``--format``/``--jmespath`` choices of :func:`output_options`."""
call_provider = _calling
"""Call a client method; a provider's refusal or no answer ends the command with aptk's exit codes."""
parse_body = _body
"""A JSON document from text, or from a file with ``@path``; a usage error otherwise."""
make_client = _client
"""An :class:`~toolkit.client.ActionProviderClient` for a provider URL and a token."""

