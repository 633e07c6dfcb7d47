"""Config: every setting read from the environment once; a bad value stops start-up, saying why."""
import subprocess
import sys

import pytest

import config
from dev.harness import ROOT
from services import get_sources


@pytest.mark.parametrize("read, value, expected", [
    (config.env_int, "12", 12),
    (config.env_int, " 12 ", 12),
    (config.env_int, "", 7),
    (config.env_float, "0.5", 0.5),
    (config.env_bool, "Yes", True),
    (config.env_bool, "off", False),
    (config.env_bool, "", None),
    (config.env_str, "x", "x"),
])
def test_a_value_is_read_as_its_type(monkeypatch, read, value, expected):
    monkeypatch.setenv("SOME_SETTING", value)
    default = {config.env_int: 7, config.env_bool: None}.get(read, "default")
    assert read("SOME_SETTING", default) == expected


@pytest.mark.parametrize("read, value, allowed", [
    (config.env_int, "abc", "a whole number"),
    (config.env_int, "1.5", "a whole number"),
    (config.env_float, "fast", "a number"),
    (config.env_bool, "maybe", "one of 1, true, yes, on, 0, false, no, off"),
])
def test_a_bad_value_names_the_variable_the_value_and_what_is_allowed(monkeypatch, read, value,
                                                                      allowed):
    monkeypatch.setenv("SOME_SETTING", value)
    with pytest.raises(config.SettingError) as caught:
        read("SOME_SETTING", None)
    assert str(caught.value) == f"SOME_SETTING={value!r} is not a valid setting: {allowed}"


def test_gunicorn_does_not_start_with_a_bad_setting():
    started = subprocess.run([sys.executable, "-m", "gunicorn", "--check-config"], cwd=ROOT,
                             env={"WEB_THREADS": "abc", "PATH": ""}, capture_output=True,
                             text=True, timeout=60)
    assert started.returncode != 0
    assert "WEB_THREADS='abc' is not a valid setting: a whole number" in started.stderr


def test_what_follows_from_other_settings_is_derived_in_one_place(app):
    assert len(get_sources(app)) == config.GET_SOURCES
    assert app.config["THREAD_POOL_SIZE"] == app.config["WEB_THREADS"] * (config.GET_SOURCES - 1)
    assert app.config["DB_POOL_SIZE"] == app.config["WEB_THREADS"]
    assert app.config["MAX_CONTENT_LENGTH"] == app.config["MAX_BODY_BYTES"]
    given = config.derive({"WEB_THREADS": 4, "THREAD_POOL_SIZE": 3, "DB_POOL_SIZE": 2,
                           "MAX_BODY_BYTES": 10})
    assert (given["THREAD_POOL_SIZE"], given["DB_POOL_SIZE"]) == (3, 2)  # set ones are kept
