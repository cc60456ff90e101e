"""Configuration: read once from the environment, validated with messages that name the variable."""

from __future__ import annotations

import pytest

import app as app_module
import config
from bot.errors import ConfigError
from bot.factory import bot_app
from bot.settings import Settings

LIVE = {
    "COMETCHAT_APP_ID": "25a8c0ffee",
    "COMETCHAT_REGION": "EU",
    "COMETCHAT_API_KEY": "secret-api-key-123",
    "COMETCHAT_BOT_UID": "Helpdesk-Bot",
    "CALLBACK_USERNAME": "u",
    "CALLBACK_PASSWORD": "secret-callback-pass",
}


def test_live_settings_from_the_environment():
    settings = config.load(environ=LIVE)
    assert settings.is_live and settings.callback_auth_enabled
    assert settings.region == "eu" and settings.bot_uid == "helpdesk-bot"
    assert settings.base_url == "https://25a8c0ffee.api-eu.cometchat.io/v3"
    assert "secret" not in repr(settings)  # the API key and the callback password stay out of logs


def test_api_url_override_and_defaults():
    settings = config.load({"COMETCHAT_API_URL": "http://127.0.0.1:9/v3/"}, environ=LIVE)
    assert settings.base_url == "http://127.0.0.1:9/v3"
    assert (settings.callback_path, settings.bots_package) == ("/cometchat/callback", "bots")


def test_local_mode_without_credentials():
    settings = config.load(environ={})
    assert not settings.is_live and not settings.callback_auth_enabled


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"COMETCHAT_REGION": "mars"}, "COMETCHAT_REGION"),
        ({"CALLBACK_PASSWORD": ""}, "CALLBACK_USERNAME and CALLBACK_PASSWORD"),
        ({"COMETCHAT_API_KEY": ""}, "COMETCHAT_API_KEY"),
        ({"CALLBACK_PATH": "callback"}, "CALLBACK_PATH"),
        ({"HANDLER_THREADS": "0"}, "HANDLER_THREADS"),
        ({"HANDLER_THREADS": "many"}, "HANDLER_THREADS"),
        ({"MAX_IN_FLIGHT": "0"}, "MAX_IN_FLIGHT"),
        ({"WORKER_THREADS": "0"}, "WORKER_THREADS"),
        ({"WORKER_METRICS": "9100"}, "WORKER_METRICS"),
        ({"WORKER_METRICS": "0.0.0.0:99999"}, "WORKER_METRICS"),
        ({"JOURNAL_SYNC": "sometimes"}, "JOURNAL_SYNC"),
        ({"SHARE_WORK": "sometimes"}, "SHARE_WORK"),
        ({"QUICK_HANDLER_MS": "-1"}, "QUICK_HANDLER_MS"),
        ({"QUICK_HANDLER_MS": "fast"}, "QUICK_HANDLER_MS"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"PUBLIC_URL": "bots.example.org"}, "PUBLIC_URL"),
        ({"INTERACTIONS_PATH": "/cometchat/callback"}, "INTERACTIONS_PATH"),
        ({"STATE_TTL": "0"}, "STATE_TTL"),
        ({"BOT_LOOP_LIMIT": "-1"}, "BOT_LOOP_LIMIT"),
        ({"PLAYGROUND": "maybe"}, "PLAYGROUND"),
    ],
)
def test_bad_settings_name_the_variable(overrides, named):
    with pytest.raises(ConfigError, match=named):
        config.load(overrides, environ=LIVE)


def test_refuses_to_start_live_with_an_unauthenticated_callback():
    without_auth = {k: v for k, v in LIVE.items() if not k.startswith("CALLBACK_")}
    with pytest.raises(ConfigError, match="unauthenticated"):
        config.load(environ=without_auth)
    allowed = config.load({"ALLOW_UNAUTHENTICATED_CALLBACKS": "true"}, environ=without_auth)
    assert allowed.is_live and not allowed.callback_auth_enabled


def test_unknown_override_is_an_error():
    with pytest.raises(ConfigError, match="COMETCHAT_APIKEY"):
        config.load({"COMETCHAT_APIKEY": "typo"})


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().region = "us"


@pytest.mark.parametrize(("environ", "enabled"), [({}, True), ({"SHARE_WORK": "false"}, False)])
def test_share_work_reaches_the_pipeline(environ, enabled, tmp_path):
    app = app_module.create_app({**environ, "JOURNAL_PATH": str(tmp_path / "journal.sqlite3")})
    assert bot_app(app).delivery.sharing.options.enabled is enabled


@pytest.mark.parametrize(
    ("environ", "limit"), [({}, 0.01), ({"QUICK_HANDLER_MS": "2.5"}, 0.0025), ({"QUICK_HANDLER_MS": "0"}, 0)]
)
def test_quick_handler_ms_reaches_the_pipeline(environ, limit, tmp_path):
    app = app_module.create_app({**environ, "JOURNAL_PATH": str(tmp_path / "journal.sqlite3")})
    assert bot_app(app).delivery.quick.limit == limit
