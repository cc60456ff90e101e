"""create_app(): local mode, live mode's safety checks, settings honoured, handler discovery, the CLI."""

from __future__ import annotations

import json
import textwrap

import pytest

import app as app_module
from bot.errors import ConfigError
from bot.factory import bot_app


def test_local_mode_starts_without_an_account_and_prints_replies(capsys):
    app = app_module.create_app()
    response = app.test_client().post("/cometchat/callback", json={
        "trigger": "after_message", "bot": "bot",
        "data": {"id": "1", "sender": "alice", "receiver": "bot", "receiverType": "user", "category": "message",
                 "type": "text", "data": {"text": "hello"}},
    })  # fmt: skip
    assert response.status_code == 200
    assert bot_app(app).wait_idle(5)
    assert "[bot -> user alice] Hello" in capsys.readouterr().out


def test_live_mode_refuses_an_unauthenticated_callback(live_settings):
    unauthenticated = {k: v for k, v in live_settings.items() if not k.startswith("CALLBACK_")}
    with pytest.raises(ConfigError, match="CALLBACK_USERNAME"):
        app_module.create_app(unauthenticated)


def test_callback_path_is_honoured(live_settings, basic_auth):
    app = app_module.create_app({**live_settings, "CALLBACK_PATH": "/hooks/cometchat"})
    client = app.test_client()
    assert client.post("/cometchat/callback", json={}, headers=basic_auth).status_code == 404
    assert client.post("/hooks/cometchat", json={}, headers=basic_auth).status_code == 400  # there, and validating


@pytest.fixture
def my_bots(tmp_path, monkeypatch):
    package = tmp_path / "my_bots"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "b_second.py").write_text(textwrap.dedent("""
        from bot import Router
        bot = Router()

        @bot.on_text("ping")
        def second(msg):
            return "from b"
    """))  # fmt: skip
    (package / "a_first.py").write_text(textwrap.dedent("""
        from bot import Router
        bot = Router()

        @bot.on_text("ping")
        def first(msg):
            return "from a"
    """))  # fmt: skip
    (package / "_private.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_bots"


def test_bots_package_is_discovered_in_name_order(my_bots):
    app = app_module.create_app({"BOTS_PACKAGE": my_bots})
    names = [route.handler.__name__ for _, route, _ in bot_app(app).router.iter_routes()]
    assert names == ["first", "second"]


def test_missing_bots_package_is_a_clear_error():
    with pytest.raises(ConfigError, match="no_such_bots"):
        app_module.create_app({"BOTS_PACKAGE": "no_such_bots"})


def test_flask_bot_routes_lists_handlers_in_match_order(my_bots):
    app = app_module.create_app({"BOTS_PACKAGE": my_bots})
    result = app.test_cli_runner().invoke(args=["bot", "routes"])
    assert result.exit_code == 0, result.output
    assert result.output.index("first") < result.output.index("second")


def test_every_http_error_is_json(live_app):
    response = live_app.test_client().get("/cometchat/callback")
    assert response.status_code == 405
    assert json.loads(response.data)["error"]["code"] == "method_not_allowed"
