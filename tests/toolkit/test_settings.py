"""Start-up checks: misspelt APTK_* names and databases that cannot be used stop the app from being set up."""

import re
import stat
from pathlib import Path

import pytest
from flask import Flask

from providers.hello import provider as hello
from toolkit import ActionProvider, ConfigurationError, Toolkit
from toolkit.server import create_app
from toolkit.settings import KNOWN_SETTINGS, check_settings, register_settings
from toolkit.testing import provider_client

ROOT = Path(__file__).resolve().parents[2]


def app_with(tmp_path, **config):
    app = Flask("t")
    app.config.update({"APTK_DATA_DIR": str(tmp_path / "data"), **config})
    return app


@pytest.mark.parametrize("name, meant", [("APTK_DATABSE_URL", "APTK_DATABASE_URL"),
                                         ("APTK_EXECUTER_THREADS", "APTK_EXECUTOR_THREADS"),
                                         ("APTK_AUTH_ISUER", "APTK_AUTH_ISSUER")])
def test_a_misspelt_name_in_app_config_stops_init_app(tmp_path, name, meant):
    with pytest.raises(ConfigurationError) as error:
        Toolkit(app_with(tmp_path, **{name: "x"}))
    message = str(error.value)
    assert f"unknown setting {name} in app.config: did you mean {meant}?" in message
    assert "\n" not in message


def test_a_misspelt_name_in_the_environment_stops_create_app(tmp_path, monkeypatch):
    monkeypatch.setenv("APTK_DATABSE_URL", f"sqlite:///{tmp_path}/other.db")
    with pytest.raises(ConfigurationError, match=r"APTK_DATABSE_URL in the environment: did you mean "
                                                 r"APTK_DATABASE_URL\?"):
        create_app({"APTK_DATA_DIR": str(tmp_path)}, providers=[("/hello", hello)])
    # Nothing was created from the fallback either.
    assert not (tmp_path / "aptk.db").exists()


def test_a_name_like_nothing_known_is_refused_too(tmp_path):
    with pytest.raises(ConfigurationError, match="unknown setting APTK_QQQ in app.config: no setting"):
        Toolkit(app_with(tmp_path, APTK_QQQ="1"))


def test_settings_of_other_programs_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("MYAPP_DATABSE_URL", "x")
    monkeypatch.setenv("APTK_TEST_NGINX", "/usr/sbin/nginx")  # test suites' own knobs
    Toolkit(app_with(tmp_path, SECRET_KEY="k", MYAPP_ANYTHING=1))


def test_a_provider_registers_its_own_settings(tmp_path, monkeypatch):
    name = "APTK_GREETER_STYLE_FOR_TEST"
    monkeypatch.setenv(name, "formal")
    with pytest.raises(ConfigurationError, match=name):
        Toolkit(app_with(tmp_path / "before"))
    monkeypatch.setattr("toolkit.settings.KNOWN_SETTINGS", set(KNOWN_SETTINGS))
    register_settings(name)  # what a provider module does at import
    greeter = ActionProvider(name="greeter", title="Greeter", input_schema={"type": "object"})

    @greeter.run
    def _run(body, ctx):
        return {"style": __import__("os").environ[name]}

    with provider_client(greeter, tmp_path / "after") as client:
        assert client.run({}, wait=True)["details"] == {"style": "formal"}


@pytest.mark.parametrize("bad", ["GREETER_STYLE", "aptk_lower", " APTK_X", 3])
def test_register_settings_takes_only_aptk_names(bad):
    with pytest.raises(ValueError):
        register_settings(bad)


def test_every_aptk_name_in_the_tree_is_known():
    """A setting read anywhere in the toolkit or the bundled providers, or in a table of the README, is known."""
    name = r"\bAPTK_[A-Z0-9_]*[A-Z0-9]\b"
    found = set()
    for path in [*ROOT.glob("toolkit/**/*.py"), *ROOT.glob("providers/**/*.py")]:
        found |= set(re.findall(name, path.read_text()))
    tables = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    found |= set(re.findall(name, "\n".join(tables)))
    assert found - KNOWN_SETTINGS == set()
    check_settings({name: "" for name in found}, {})


# --- databases ----------------------------------------------------------------------------------------------

def test_a_postgresql_url_without_its_driver_names_the_extra(tmp_path):
    # pg8000 is a real PostgreSQL driver that the toolkit does not install.
    with pytest.raises(ConfigurationError) as error:
        Toolkit(app_with(tmp_path, APTK_DATABASE_URL="postgresql+pg8000://aptk:s3cret-pw@db.example/aptk"))
    message = str(error.value)
    assert "pip install 'action-provider-toolkit[postgres]'" in message
    assert "pg8000" in message
    assert "s3cret-pw" not in message


def test_an_unknown_dialect_is_named(tmp_path):
    with pytest.raises(ConfigurationError, match="no database dialect 'nosuchdb'"):
        Toolkit(app_with(tmp_path, APTK_DATABASE_URL="nosuchdb://h/x"))


def test_a_url_that_is_no_url_is_refused_without_echoing_it(tmp_path):
    with pytest.raises(ConfigurationError) as error:
        Toolkit(app_with(tmp_path, APTK_DATABASE_URL="user:pw-9f8e@host/db"))
    assert "APTK_DATABASE_URL is not a database URL" in str(error.value)
    assert "pw-9f8e" not in str(error.value)


def test_a_sqlite_file_that_cannot_be_created_stops_start_up(tmp_path):
    (tmp_path / "plain-file").write_text("")
    path = tmp_path / "plain-file" / "aptk.db"
    with pytest.raises(ConfigurationError, match=f"cannot open database at {re.escape(str(path))}"):
        Toolkit(app_with(tmp_path, APTK_DATABASE_URL=f"sqlite:///{path}"))


def test_a_sqlite_path_that_is_a_directory_stops_start_up(tmp_path):
    (tmp_path / "db").mkdir()
    with pytest.raises(ConfigurationError, match="cannot open database at .*it is not a file"):
        Toolkit(app_with(tmp_path, APTK_DATABASE_URL=f"sqlite:///{tmp_path / 'db'}"))


def test_a_sqlite_file_that_is_not_a_database_stops_start_up(tmp_path):
    (tmp_path / "aptk.db").write_bytes(b"this is not a database, just some bytes " * 100)
    with pytest.raises(ConfigurationError, match="cannot open database at .*not a database"):
        Toolkit(app_with(tmp_path, APTK_DATABASE_URL=f"sqlite:///{tmp_path / 'aptk.db'}"))


def test_a_data_dir_that_cannot_be_created_stops_start_up(tmp_path):
    (tmp_path / "file").write_text("")
    app = Flask("t")
    app.config["APTK_DATA_DIR"] = str(tmp_path / "file" / "data")
    with pytest.raises(ConfigurationError, match="cannot create the data directory .*file/data"):
        Toolkit(app)


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_directory_stops_start_up(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(ConfigurationError, match="cannot open database at .*not writable"):
            Toolkit(app_with(tmp_path, APTK_DATABASE_URL=f"sqlite:///{locked / 'aptk.db'}"))
    finally:
        locked.chmod(0o700)


def test_in_process_tests_do_not_see_the_developers_own_settings(pytester, monkeypatch):
    """The suite's autouse fixture hides an APTK_* variable exported in the shell that runs pytest."""
    pytester.makeconftest("from tests.conftest import _without_the_developers_settings  # noqa: F401\n")
    pytester.makepyfile(
        "import os\n"
        "def test_sees_nothing():\n"
        "    assert 'APTK_AUTH_AUDIENCE' not in os.environ\n"
    )
    monkeypatch.setenv("APTK_AUTH_AUDIENCE", "the-developers-own")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


# --- the one reader: None and empty mean not set, a wrong value names the setting -----------------------------

NAME = "APTK_TEST_READER"


def test_a_setting_comes_from_the_config_first_then_the_environment_then_the_default(monkeypatch):
    from toolkit.settings import setting

    assert setting({}, NAME, "default") == "default"
    monkeypatch.setenv(NAME, "from env")
    assert setting({}, NAME, "default") == "from env"
    assert setting({NAME: "from config"}, NAME, "default") == "from config"
    assert setting({NAME: 0}, NAME, "default") == 0  # a falsy value that is set stays set


@pytest.mark.parametrize("unset", [None, ""])
def test_none_or_empty_in_the_config_lets_the_environment_and_then_the_default_through(monkeypatch, unset):
    from toolkit.settings import number, setting

    assert setting({NAME: unset}, NAME, "default") == "default"
    monkeypatch.setenv(NAME, "")
    assert setting({NAME: unset}, NAME, "default") == "default"
    assert number({NAME: unset}, NAME, 7, kind=int) == 7
    monkeypatch.setenv(NAME, "3")
    assert setting({NAME: unset}, NAME, "default") == "3"


def test_numbers_are_converted_to_their_kind(monkeypatch):
    from toolkit.settings import number

    monkeypatch.setenv(NAME, "12")
    assert (number({}, NAME, 1, kind=int), type(number({}, NAME, 1, kind=int))) == (12, int)
    assert (number({}, NAME, 1.5), type(number({}, NAME, 1.5))) == (12.0, float)
    assert number({NAME: 2.5}, NAME, 1.0) == 2.5


@pytest.mark.parametrize("value, options, message", [
    ("soon", {}, "APTK_TEST_READER must be a number, not 'soon'"),
    ("nan", {}, "APTK_TEST_READER must be a number, not 'nan'"),
    ("inf", {}, "APTK_TEST_READER must be a number, not 'inf'"),
    ([1], {}, "APTK_TEST_READER must be a number, not [1]"),
    ("1.5", {"kind": int}, "APTK_TEST_READER must be a whole number, not '1.5'"),
    ("0", {"positive": True}, "APTK_TEST_READER must be positive, not '0'"),
    ("-1", {}, "APTK_TEST_READER must be at least 0, not '-1'"),
    ("100", {"kind": int, "minimum": 4096}, "APTK_TEST_READER must be at least 4096, not '100'"),
])
def test_a_wrong_number_is_an_error_naming_the_setting_and_the_value(value, options, message):
    from toolkit.settings import number

    with pytest.raises(ConfigurationError) as error:
        number({NAME: value}, NAME, 1, **options)
    assert str(error.value) == message


@pytest.mark.parametrize("value, expected", [("true", True), ("Yes", True), ("1", True), ("on", True), (True, True),
                                             ("false", False), ("NO", False), ("0", False), ("off", False),
                                             (False, False), (None, "default"), ("", "default")])
def test_flags(value, expected):
    from toolkit.settings import flag

    assert flag({NAME: value}, NAME, "default") == expected


def test_a_wrong_flag_names_the_setting():
    from toolkit.settings import flag

    with pytest.raises(ConfigurationError, match=r"^APTK_TEST_READER must be true or false, not 'maybe'$"):
        flag({NAME: "maybe"}, NAME, True)


def test_lists_come_comma_separated_or_as_lists():
    from toolkit.settings import string_list

    assert string_list({NAME: " a, b ,,c "}, NAME) == ["a", "b", "c"]
    assert string_list({NAME: ["a", 2]}, NAME) == ["a", "2"]
    assert string_list({NAME: ""}, NAME) == []
    with pytest.raises(ConfigurationError, match="APTK_TEST_READER must be a comma-separated list, not 3"):
        string_list({NAME: 3}, NAME)


def test_an_empty_toolkit_setting_in_the_environment_means_its_default(tmp_path, monkeypatch):
    from toolkit import get_toolkit

    monkeypatch.setenv("APTK_LEASE_SECONDS", "")
    monkeypatch.setenv("APTK_EXECUTOR_THREADS", "")
    app = app_with(tmp_path)
    Toolkit(app)
    runtime = get_toolkit(app).runtime
    assert runtime.lease_seconds == 30.0
    assert runtime.executor.max_workers == 8


def test_a_wrong_toolkit_setting_stops_set_up_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("APTK_LEASE_SECONDS", "a while")
    with pytest.raises(ConfigurationError, match=r"^APTK_LEASE_SECONDS must be a number, not 'a while'$"):
        Toolkit(app_with(tmp_path))
