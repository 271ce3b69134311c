"""``aptk timer``: create, list, show and cancel timers on a server's ``/timers`` provider."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import click

from toolkit.cli import call_provider, make_client, output_options, parse_body, print_document

DEFAULT_TIMERS_URL = "http://127.0.0.1:5000/timers"

timers_option = click.option(
    "--timers-url", envvar="APTK_TIMERS_URL", default=DEFAULT_TIMERS_URL, show_default=True,
    help="The timers provider ($APTK_TIMERS_URL); transfer and flow targets are on the same server.")
token_option = click.option("--token", envvar="APTK_TOKEN", default=None,
                            help="Bearer token ($APTK_TOKEN); default: your `aptk login` session's token.")
_SECONDS = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def interval_value(text: str) -> str | float:
    """``--interval``: ``90``, ``30s``, ``15m``, ``1h``, ``2d``, ``1w`` (seconds) or an ISO 8601 duration."""
    match = _SECONDS.fullmatch(text.strip())
    if match:
        return float(match.group(1)) * _UNITS[match.group(2)]
    if text.upper().startswith("P"):
        return text.upper()
    raise click.BadParameter(f"{text!r}: give seconds (90), 30s, 15m, 1h, 2d, 1w, or ISO 8601 (PT1H, P1M)",
                             param_hint="--interval")


def schedule_options(fn: Any) -> Any:
    for option in reversed([
        click.option("--interval", required=True, help="Time between runs: 90, 30s, 15m, 1h, 2d, or ISO 8601 "
                     "(PT1H, P1D, P1M for calendar months)."),
        click.option("--start", default=None, help="First run (ISO 8601 date-time, UTC unless it says); default now."),
        click.option("--stop-after-runs", type=click.IntRange(1), default=None, help="End after this many runs."),
        click.option("--stop-after-date", default=None, help="No run after this date-time (ISO 8601)."),
        click.option("--name", default=None, help="A name for the timer."),
        click.option("--cancel-running", is_flag=True, default=False,
                     help="Cancelling the timer also cancels the run it started that still runs."),
        timers_option,
        token_option,
        output_options,
    ]):
        fn = option(fn)
    return fn


def _create(timers_url: str, token: str | None, callback_url: str, callback_body: Any, interval: str, start: str | None,
            stop_after_runs: int | None, stop_after_date: str | None, name: str | None,
            cancel_running: bool) -> None:
    body: dict[str, Any] = {"callback_url": callback_url, "callback_body": callback_body,
                            "interval": interval_value(interval)}
    if cancel_running:
        body["cancel_running"] = True
    if start:
        body["start"] = start
    stop: dict[str, Any] = {}
    if stop_after_runs is not None:
        stop["n_runs"] = stop_after_runs
    if stop_after_date:
        stop["date"] = stop_after_date
    if stop:
        body["stop_after"] = stop
    if name:
        body["name"] = name
    client = make_client(timers_url, token)
    print_document(call_provider(client.run, body, label=(name or None) and name[:64]))


def server_of(timers_url: str) -> str:
    parts = urlsplit(timers_url)
    return f"{parts.scheme}://{parts.netloc}"


@click.group()
def timer() -> None:
    """Run an action provider, a transfer or a flow on a schedule (the server's /timers provider)."""


@timer.command()
@click.argument("url")
@click.option("--body", required=True, help="The body of each run, as JSON (or @file.json).")
@schedule_options
def create(url: str, body: str, timers_url: str, token: str | None, interval: str, start: str | None,
           stop_after_runs: int | None, stop_after_date: str | None, name: str | None, cancel_running: bool) -> None:
    """Run the action provider at URL (its base or /run URL) with --body every --interval."""
    run_url = url.rstrip("/") if url.rstrip("/").endswith("/run") else url.rstrip("/") + "/run"
    _create(timers_url, token, run_url, parse_body(body), interval, start, stop_after_runs, stop_after_date, name,
            cancel_running)


def _location(value: str, param_hint: str) -> tuple[str, str]:
    collection, sep, path = value.partition(":")
    if not sep or not collection or not path.startswith("/"):
        raise click.BadParameter(f"{value!r}: give COLLECTION:/path", param_hint=param_hint)
    return collection, path


@timer.command()
@click.argument("source")
@click.argument("destination")
@click.option("--recursive/--no-recursive", default=None, help="Copy a folder (default: when the path ends in /).")
@click.option("--sync-level", type=click.Choice(["exists", "size", "mtime", "checksum"]), default=None,
              help="Copy only files that differ by this test.")
@click.option("--label", "transfer_label", default=None, help="A label for each transfer.")
@schedule_options
def transfer(source: str, destination: str, recursive: bool | None, sync_level: str | None,
             transfer_label: str | None, timers_url: str, token: str | None, interval: str, start: str | None,
             stop_after_runs: int | None, stop_after_date: str | None, name: str | None,
             cancel_running: bool) -> None:
    """Copy SOURCE to DESTINATION (each COLLECTION:/path) every --interval with the server's /transfer."""
    source_collection, source_path = _location(source, "SOURCE")
    destination_collection, destination_path = _location(destination, "DESTINATION")
    item: dict[str, Any] = {"source_path": source_path, "destination_path": destination_path,
                            "recursive": source_path.endswith("/") if recursive is None else recursive}
    body: dict[str, Any] = {"source_endpoint_id": source_collection, "destination_endpoint_id": destination_collection,
                            "transfer_items": [item]}
    if sync_level:
        body["sync_level"] = sync_level
    if transfer_label:
        body["label"] = transfer_label
    _create(timers_url, token, f"{server_of(timers_url)}/transfer/run", body, interval, start, stop_after_runs,
            stop_after_date, name or f"transfer {source} -> {destination}", cancel_running)


@timer.command()
@click.argument("flow_id")
@click.option("--input", "flow_input", default="{}", show_default=True,
              help="The flow's input, as JSON (or @file.json).")
@schedule_options
def flow(flow_id: str, flow_input: str, timers_url: str, token: str | None, interval: str, start: str | None,
         stop_after_runs: int | None, stop_after_date: str | None, name: str | None, cancel_running: bool) -> None:
    """Run the server's flow FLOW_ID with --input every --interval."""
    _create(timers_url, token, f"{server_of(timers_url)}/flows/{flow_id}/run", parse_body(flow_input), interval,
            start, stop_after_runs, stop_after_date, name or f"flow {flow_id}", cancel_running)


@timer.command(name="list")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["ACTIVE", "INACTIVE", "SUCCEEDED", "FAILED"], case_sensitive=False),
              help="Only timers in this state (repeatable); default: every state.")
@timers_option
@token_option
@output_options
def list_timers(statuses: tuple[str, ...], timers_url: str, token: str | None) -> None:
    """The timers you created or may see."""
    client = make_client(timers_url, token)
    print_document(list(call_provider(lambda: list(client.actions(status=[s.upper() for s in statuses])))))


@timer.command()
@click.argument("timer_id")
@timers_option
@token_option
@output_options
def show(timer_id: str, timers_url: str, token: str | None) -> None:
    """A timer's status: next run, number of runs, the last runs, skipped and failed ticks."""
    print_document(call_provider(make_client(timers_url, token).status, timer_id))


FINAL_RUN_STATES = ("SUCCEEDED", "FAILED", "RELEASED")


@timer.command()
@click.argument("timer_id")
@click.option("--cancel-running", is_flag=True, default=False,
              help="Also cancel, at the target, the runs the timer lists that still run (as you, with the same "
                   "token or login).")
@timers_option
@token_option
@output_options
def cancel(timer_id: str, cancel_running: bool, timers_url: str, token: str | None) -> None:
    """Stop a timer's schedule (an action it started and that still runs is left alone unless --cancel-running)."""
    from toolkit.client import ClientError, ProviderUnreachable

    status = call_provider(make_client(timers_url, token).cancel, timer_id)
    if cancel_running:
        details = status.get("details") or {}
        run_url = str(details.get("callback_url", ""))
        going = [run for run in details.get("last_runs") or []
                 if run.get("status") not in FINAL_RUN_STATES and run.get("action_id")]
        if going:
            target = make_client(run_url[: -len("/run")] if run_url.endswith("/run") else run_url, token)
            for run in going:
                try:
                    cancelled = target.cancel(run["action_id"])
                except (ClientError, ProviderUnreachable) as exc:
                    if getattr(exc, "status", None) != 409:  # 409: it ended meanwhile
                        raise click.ClickException(f"the timer is cancelled, but not its run {run['action_id']} "
                                                   f"at {run_url}: {exc}") from None
                    cancelled = call_provider(target.status, run["action_id"])
                run["status"] = cancelled.get("status", run["status"])
                click.echo(f"run {run['action_id']} (tick {run.get('tick')}) at {run_url}: {run['status']}", err=True)
    print_document(status)


@timer.command()
@click.argument("timer_id")
@timers_option
@token_option
@output_options
def resume(timer_id: str, timers_url: str, token: str | None) -> None:
    """Schedule again a timer that paused (INACTIVE) for want of credentials; it runs from its next tick."""
    print_document(call_provider(make_client(timers_url, token).resume, timer_id))
