"""The access logger of `aptk serve` writes the lines gunicorn's own logger writes, from fewer atoms."""

from __future__ import annotations

import datetime
import logging

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from toolkit.accesslog import AccessLogger


class Answer:
    status = "202 ACCEPTED"
    sent = 321
    headers = [("Content-Type", "application/json"), ("X-Trace", 'say "hi"')]


class Asked:
    headers = [("HOST", "example.org"), ("USER-AGENT", 'agent "7"'), ("X-REQUEST-ID", "req-1")]


ENVIRON = {
    "REMOTE_ADDR": "10.0.0.7", "REQUEST_METHOD": "POST", "RAW_URI": "/hello/run?x=1", "SERVER_PROTOCOL": "HTTP/1.1",
    "PATH_INFO": "/hello/run", "QUERY_STRING": "x=1", "HTTP_REFERER": "https://r.example/", "HTTP_USER_AGENT": 'agent "7"',
    "HTTP_AUTHORIZATION": "Basic dXNlcjpwdw==", "SOME_VARIABLE": "on", "wsgi.url_scheme": "http",
}
TOOK = datetime.timedelta(seconds=1, microseconds=2345)

FORMATS = [
    Config().access_log_format,  # gunicorn's default, which `aptk serve` uses
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s %(B)s %(m)s %(U)s %(q)s %(H)s %(T)s %(D)s %(M)s %(L)s %(p)s',
    '%({x-request-id}i)s %({X-Request-Id}i)s %({x-trace}o)s %({some_variable}e)s %({SOME_VARIABLE}e)s',
    '%({missing}i)s %({missing}o)s %({missing}e)s %(nothing)s',
]


def line(logger_class: type[Logger], access_format: str) -> str:
    config = Config()
    config.set("access_log_format", access_format)
    logger = logger_class(config)
    logger.now = lambda: "[03/Dec/2026:10:00:00 +0000]"  # type: ignore[method-assign]
    atoms = logger.atoms_wrapper_class(logger.atoms(Answer(), Asked(), ENVIRON, TOOK))
    return access_format % atoms


@pytest.mark.parametrize("access_format", FORMATS)
def test_every_access_format_gives_the_line_gunicorn_gives(access_format):
    assert line(AccessLogger, access_format) == line(Logger, access_format)


class Bare:
    status = 200
    sent = None
    headers: list[tuple[str, str]] = []


@pytest.mark.parametrize("access_format", FORMATS)
@pytest.mark.parametrize("answer, environ", [
    (Answer(), ENVIRON),
    (Bare(), {"REQUEST_METHOD": "GET", "RAW_URI": '/a"b', "SERVER_PROTOCOL": "HTTP/1.0"}),
    (Bare(), {**ENVIRON, "HTTP_AUTHORIZATION": "Bearer abc", "REMOTE_ADDR": 'x"y', "HTTP_REFERER": ""}),
], ids=["full", "bare", "bearer"])
def test_the_written_line_is_gunicorns(access_format, answer, environ):
    config = Config()
    config.set("access_log_format", access_format)
    ours, theirs = AccessLogger(config), Logger(config)
    ours.now = theirs.now = lambda: "[03/Dec/2026:10:00:00 +0000]"  # type: ignore[method-assign]
    expected = access_format % theirs.atoms_wrapper_class(theirs.atoms(answer, Asked(), environ, TOOK))
    assert ours.line(answer, Asked(), environ, TOOK) == expected


def test_the_default_line_names_the_request_and_escapes_quotes():
    text = line(AccessLogger, Config().access_log_format)
    assert text == ('10.0.0.7 - user [03/Dec/2026:10:00:00 +0000] "POST /hello/run?x=1 HTTP/1.1" 202 321 '
                    '"https://r.example/" "agent \\"7\\""')


def test_only_the_named_atoms_are_built():
    config = Config()
    logger = AccessLogger(config)
    atoms = logger.atoms(Answer(), Asked(), {**ENVIRON, **{f"HTTP_X_{i}": "v" for i in range(40)}}, TOOK)
    assert sorted(atoms) == sorted(["h", "l", "u", "t", "r", "s", "b", "f", "a"])


def test_a_changed_format_is_followed():
    config = Config()
    logger = AccessLogger(config)
    logger.atoms(Answer(), Asked(), ENVIRON, TOOK)
    config.set("access_log_format", "%({x-request-id}i)s")
    assert logger.atoms(Answer(), Asked(), ENVIRON, TOOK) == {"{x-request-id}i": "req-1"}


def test_the_time_stamp_is_the_current_second(monkeypatch):
    logger = AccessLogger(Config())
    now = [1_800_000_000.2]
    monkeypatch.setattr("toolkit.accesslog.time.time", lambda: now[0])
    monkeypatch.setattr("gunicorn.glogging.time.strftime",
                        lambda fmt: f"[{int(now[0])}]")
    assert logger.now() == "[1800000000]"
    now[0] += 0.5
    assert logger.now() == "[1800000000]"
    now[0] += 0.6
    assert logger.now() == "[1800000001]"


def test_access_lines_reach_the_access_log(tmp_path):
    config = Config()
    config.set("accesslog", str(tmp_path / "access.log"))
    logger = AccessLogger(config)
    logger.access(Answer(), Asked(), ENVIRON, TOOK)
    for handler in logging.getLogger("gunicorn.access").handlers:
        handler.flush()
    written = (tmp_path / "access.log").read_text()
    assert '"POST /hello/run?x=1 HTTP/1.1" 202 321' in written


def alone(logger: AccessLogger, monkeypatch) -> logging.Handler:
    """Leave gunicorn's handler alone on the access log (pytest's log capture may add its own); return it."""
    ours = [h for h in logger.access_log.handlers if getattr(h, "_gunicorn", False)]
    monkeypatch.setattr(logger.access_log, "handlers", ours)
    return ours[0]


def written_by(logger_class: type[Logger], path, monkeypatch) -> str:
    config = Config()
    config.set("accesslog", str(path))
    logger = logger_class(config)
    alone(logger, monkeypatch)
    logger.now = lambda: "[03/Dec/2026:10:00:00 +0000]"  # type: ignore[method-assign]
    logger.access(Answer(), Asked(), ENVIRON, TOOK)
    logger.access(Answer(), Asked(), ENVIRON, TOOK)
    for handler in logger.access_log.handlers:
        handler.close()
    return path.read_text()


def test_a_plain_access_log_gets_gunicorns_lines_without_a_log_record(tmp_path, monkeypatch):
    expected = written_by(Logger, tmp_path / "gunicorn.log", monkeypatch)
    monkeypatch.setattr(logging.Logger, "info", lambda *a, **k: pytest.fail("went through logging"))
    assert written_by(AccessLogger, tmp_path / "ours.log", monkeypatch) == expected
    assert expected.count("\n") == 2


def test_a_filter_on_the_access_log_still_sees_every_line(tmp_path, monkeypatch):
    config = Config()
    config.set("accesslog", str(tmp_path / "access.log"))
    logger = AccessLogger(config)
    alone(logger, monkeypatch)
    seen: list[str] = []
    keep_none = logging.Filter("nothing-matches")
    logger.access_log.addFilter(lambda record: seen.append(record.getMessage()) or keep_none.filter(record))
    try:
        logger.access(Answer(), Asked(), ENVIRON, TOOK)
    finally:
        logger.access_log.filters.clear()
    for handler in logger.access_log.handlers:
        handler.close()
    assert len(seen) == 1 and '"POST /hello/run?x=1 HTTP/1.1" 202' in seen[0]
    assert (tmp_path / "access.log").read_text() == ""  # the filter dropped it


def test_another_formatter_on_the_access_log_is_used(tmp_path, monkeypatch):
    config = Config()
    config.set("accesslog", str(tmp_path / "access.log"))
    logger = AccessLogger(config)
    handler = alone(logger, monkeypatch)
    handler.setFormatter(logging.Formatter("ACCESS %(levelname)s %(message)s"))
    logger.access(Answer(), Asked(), ENVIRON, TOOK)
    handler.close()
    assert (tmp_path / "access.log").read_text().startswith('ACCESS INFO 10.0.0.7 - user [')
