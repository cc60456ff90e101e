"""create_app(): local mode, live mode's safety checks, the settings honoured, handler discovery, the CLI."""

from __future__ import annotations

import json
import logging
import re
import sys
import textwrap
import uuid

import pytest

import app as app_module
from bot.client import CometChatClient, LocalSender
from bot.errors import ConfigError
from bot.factory import bot_app
from bot.testing import make_callback
from tests.conftest import API_KEY, BOT_UID

SEND_PATH = f"/v3/bots/{BOT_UID}/messages"


def wait(app) -> None:
    assert bot_app(app).wait_idle(10), "the bot did not finish in time"


# ------------------------------------------------------------------ local mode


def test_local_mode_starts_without_credentials_and_prints_its_replies(capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="bot.factory"):
        app = app_module.create_app()
    state = bot_app(app)
    assert not state.settings.is_live
    assert isinstance(state.sender, LocalSender)
    assert any("local mode" in r.getMessage() for r in caplog.records)  # says so at start

    response = app.test_client().post("/cometchat/callback", json=make_callback("hello", sender="zoe"))
    assert response.status_code == 200  # no Basic auth configured: none needed
    wait(app)
    assert [request.body["data"]["text"] for request in state.sender.sent] == [
        "Hello Zoe! Type /help to see what I can do."
    ]
    assert "[bot -> user zoe] Hello Zoe! Type /help to see what I can do." in capsys.readouterr().out


def test_local_mode_with_callback_credentials_checks_them(basic_auth):
    app = app_module.create_app({"CALLBACK_USERNAME": "cometchat", "CALLBACK_PASSWORD": "s3cret-callback-pass"})
    client = app.test_client()
    assert client.post("/cometchat/callback", json=make_callback("hi")).status_code == 401
    assert client.post("/cometchat/callback", json=make_callback("hi"), headers=basic_auth).status_code == 200
    wait(app)


# ------------------------------------------------------------------ live mode


def test_live_mode_sends_through_the_cometchat_client(live_app):
    state = bot_app(live_app)
    assert state.settings.is_live
    assert isinstance(state.sender, CometChatClient)
    assert state.sender.retry.max_retries == 3  # COMETCHAT_MAX_RETRIES from the settings


@pytest.mark.parametrize(
    ("drop", "keep", "named"),
    [
        (("CALLBACK_USERNAME", "CALLBACK_PASSWORD"), {}, "ALLOW_UNAUTHENTICATED_CALLBACKS"),
        (("CALLBACK_USERNAME", "CALLBACK_PASSWORD"), {"ALLOW_UNAUTHENTICATED_CALLBACKS": "false"}, "CALLBACK_PASSWORD"),
        (("CALLBACK_PASSWORD",), {}, "set both CALLBACK_USERNAME and CALLBACK_PASSWORD"),
        (("CALLBACK_USERNAME",), {}, "set both CALLBACK_USERNAME and CALLBACK_PASSWORD"),
    ],
    ids=["no-auth", "allow-false", "no-password", "no-username"],
)
def test_live_mode_refuses_to_start_without_callback_credentials(drop, keep, named, live_settings):
    settings = {k: v for k, v in live_settings.items() if k not in drop} | keep
    with pytest.raises(ConfigError, match=re.escape(named)) as caught:
        app_module.create_app(settings)
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize("allow", ["true", "1", "yes"])
def test_live_mode_without_callback_auth_starts_when_explicitly_allowed(allow, live_settings, fake_api, payload):
    settings = {k: v for k, v in live_settings.items() if not k.startswith("CALLBACK_")}
    app = app_module.create_app({**settings, "ALLOW_UNAUTHENTICATED_CALLBACKS": allow})
    response = app.test_client().post("/cometchat/callback", json=payload("slash_command"))  # no Authorization
    assert response.status_code == 200
    wait(app)
    [(request, _)] = fake_api.log
    assert request.path == SEND_PATH and request.headers["apikey"] == API_KEY


def test_the_allow_setting_is_read_from_the_environment(live_settings, monkeypatch):
    for name, value in live_settings.items():
        if not name.startswith("CALLBACK_"):
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="ALLOW_UNAUTHENTICATED_CALLBACKS"):
        app_module.create_app()
    monkeypatch.setenv("ALLOW_UNAUTHENTICATED_CALLBACKS", "true")
    assert bot_app(app_module.create_app()).settings.allow_unauthenticated_callbacks


def test_unknown_or_malformed_settings_are_named(live_settings):
    with pytest.raises(ConfigError, match="CALLBACK_PAHT"):
        app_module.create_app({"CALLBACK_PAHT": "/x"})
    with pytest.raises(ConfigError, match="COMETCHAT_MAX_RETRIES"):
        app_module.create_app({**live_settings, "COMETCHAT_MAX_RETRIES": "many"})


# ------------------------------------------------------------------ settings honoured


@pytest.mark.parametrize("source", ["override", "environment"])
def test_callback_path_is_honoured(source, live_settings, basic_auth, monkeypatch, fake_api, payload):
    if source == "environment":
        monkeypatch.setenv("CALLBACK_PATH", "/hooks/cometchat")
        app = app_module.create_app(live_settings)
    else:
        app = app_module.create_app({**live_settings, "CALLBACK_PATH": "/hooks/cometchat"})
    client = app.test_client()
    assert client.post("/cometchat/callback", json=payload("slash_command"), headers=basic_auth).status_code == 404
    response = client.post("/hooks/cometchat", json=payload("slash_command"), headers=basic_auth)
    assert response.status_code == 200 and response.get_json()["status"] == "accepted"
    assert client.post("/hooks/cometchat", json=payload("slash_command")).status_code == 401  # the same checks there
    wait(app)
    assert len(fake_api.log) == 1


def test_a_callback_path_without_a_leading_slash_is_refused():
    with pytest.raises(ConfigError, match="CALLBACK_PATH"):
        app_module.create_app({"CALLBACK_PATH": "hooks"})


def test_every_http_error_is_json(live_app):
    response = live_app.test_client().get("/cometchat/callback")
    assert response.status_code == 405
    assert json.loads(response.data)["error"]["code"] == "method_not_allowed"
    assert live_app.test_client().get("/").get_json()["error"]["code"] == "not_found"


# ------------------------------------------------------------------ BOTS_PACKAGE

MODULES = {
    "__init__.py": "",
    "b_second.py": """
        from bot import Router
        bot = Router()

        @bot.on_text("ping")
        def second(msg):
            return "from b"

        @bot.fallback
        def shrug(msg):
            return "?"
    """,
    "a_first.py": """
        from bot import Router
        bot = Router()

        @bot.on_text("^ping$")
        def first(msg):
            return "from a"
    """,
    "helpers.py": "TOOLS = 1  # no `bot`: skipped\n",
    "_private.py": "raise RuntimeError('modules starting with _ are never imported')\n",
}


@pytest.fixture
def my_bots(tmp_path, monkeypatch) -> str:
    """A bots package of its own on sys.path (a fresh name each time: imported modules are cached)."""
    package = tmp_path / f"my_test_bots_{uuid.uuid4().hex[:12]}"
    package.mkdir()
    for name, source in MODULES.items():
        (package / name).write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package.name
    for module in [name for name in sys.modules if name.split(".")[0] == package.name]:
        del sys.modules[module]


def test_bots_package_is_honoured_in_file_name_order(my_bots, capsys):
    app = app_module.create_app({"BOTS_PACKAGE": my_bots})
    state = bot_app(app)
    assert [route.handler.__name__ for _, route, _ in state.router.iter_routes()] == ["first", "second", "shrug"]
    client = app.test_client()
    for text in ("ping", "ping pong", "hello"):
        assert client.post("/cometchat/callback", json=make_callback(text)).status_code == 200
        wait(app)
    assert [request.body["data"]["text"] for request in state.sender.sent] == ["from a", "from b", "?"]


def test_a_missing_bots_package_is_a_clear_error():
    with pytest.raises(ConfigError, match="BOTS_PACKAGE 'no_such_bots'"):
        app_module.create_app({"BOTS_PACKAGE": "no_such_bots"})


def test_a_bots_module_that_fails_to_import_stops_the_app(my_bots, tmp_path):
    (tmp_path / my_bots / "c_broken.py").write_text("import a_module_that_does_not_exist\n")
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist"):
        app_module.create_app({"BOTS_PACKAGE": my_bots})


# ------------------------------------------------------------------ the CLI


def routes_output(app) -> list[list[str]]:
    result = app.test_cli_runner().invoke(args=["bot", "routes"])
    assert result.exit_code == 0, result.output
    # "  n  kind  filter...  handler  [router; limits]": the router part may hold spaces.
    return [line.rsplit("  [", 1)[0].split() for line in result.output.splitlines() if line.strip()]


EXAMPLES = ("bots.booking.", "bots.group.", "bots.help.", "bots.media.", "bots.weather.")


def test_flask_bot_routes_lists_the_example_handlers_in_match_order(live_app):
    # Only the examples' rows: a module of yours in bots/ adds rows without breaking this test.
    rows = [row for row in routes_output(live_app) if row[-1].startswith(EXAMPLES)]
    assert [row[1] for row in rows] == ["route"] * 19 + ["fallback"]
    assert [int(row[0]) for row in rows] == sorted(int(row[0]) for row in rows)  # numbered in match order
    handlers = [row[-1] for row in rows]
    assert handlers == [
        "bots.booking.start",
        "bots.booking.cancel",
        "bots.booking.city",
        "bots.booking.waiting_for_form",
        "bots.booking.booked",
        "bots.booking.stale_form",
        "bots.group.welcome",
        "bots.group.bare_mention",
        "bots.group.faq",
        "bots.group.follow_up",
        "bots.help.help_",
        "bots.help.hello",
        "bots.help.asks_for_help",
        "bots.media.got_image",
        "bots.media.got_file",
        "bots.media.got_location",
        "bots.media.got_vote",
        "bots.weather.weather_command",
        "bots.weather.weather_question",
        "bots.help.not_understood",
    ]
    output = live_app.test_cli_runner().invoke(args=["bot", "routes"]).output.splitlines()
    line = {handler: next(text for text in output if f" {handler}  [" in text) for handler in handlers}
    # What limits a route is shown with it: its step, its router's policy, filters and state scope.
    assert "[state city]" in line["bots.booking.city"]
    assert line["bots.booking.city"].endswith("[bots.booking; state per user]")
    assert line["bots.group.bare_mention"].endswith("[group.mentions; groups: mentioned]")
    assert line["bots.group.follow_up"].endswith("[group.threads; only in_bot_thread]")


def test_flask_bot_routes_lists_a_custom_package_with_its_filters(my_bots):
    result = app_module.create_app({"BOTS_PACKAGE": my_bots}).test_cli_runner().invoke(args=["bot", "routes"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 3
    assert "route" in lines[0] and "/^ping$/" in lines[0] and lines[0].rstrip().endswith(f"[{my_bots}.a_first]")
    assert "first" in lines[0] and "second" in lines[1] and "fallback" in lines[2] and "shrug" in lines[2]


def test_flask_bot_dead_letters_lists_and_retries_replies_that_failed_for_good(
    live_app, httpserver, api_answer, basic_auth, payload
):
    cli = live_app.test_cli_runner()
    result = cli.invoke(args=["bot", "dead-letters"])
    assert (result.exit_code, result.output.strip()) == (0, "no dead letters")

    status, _, refused = api_answer("not_a_member_403")
    httpserver.expect_oneshot_request(SEND_PATH).respond_with_json(refused, status=status)
    status, _, ok = api_answer("send_ok_200")
    httpserver.expect_request(SEND_PATH).respond_with_json(ok, status=status)
    callback = payload("text_group_mention")
    assert live_app.test_client().post("/cometchat/callback", json=callback, headers=basic_auth).status_code == 200
    wait(live_app)
    assert len(httpserver.log) == 1  # refused, and not retried

    result = cli.invoke(args=["bot", "dead-letters"])
    assert result.exit_code == 0, result.output
    [line] = result.output.splitlines()
    letter_id, code, where, attempts, text = line.split("\t")
    assert (code, where, attempts) == ("ERR_NOT_A_MEMBER", "message 9033 in group_ops-room", "attempts 1")
    assert text == "Sunny in Paris today, 19°C."

    result = cli.invoke(args=["bot", "dead-letters", "retry", letter_id])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"dead letter {letter_id} queued again"
    wait(live_app)
    assert len(httpserver.log) == 2 and httpserver.log[1][1].status_code == 200
    assert httpserver.log[0][0].get_data() == httpserver.log[1][0].get_data()  # the same reply, same muid
    assert cli.invoke(args=["bot", "dead-letters"]).output.strip() == "no dead letters"
    result = cli.invoke(args=["bot", "dead-letters", "retry", letter_id])
    assert result.exit_code != 0 and f"no dead reply with id {letter_id}" in result.output


def test_health_and_readiness(live_app, tmp_path):
    client = live_app.test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["status"] == "ready" and ready.get_json()["depth"]["inbox"] == 0


def test_not_ready_when_the_journal_cannot_be_read(live_settings, tmp_path):
    app = app_module.create_app({**live_settings, "JOURNAL_PATH": str(tmp_path / "journal.sqlite3")})
    bot_app(app).close(0)  # stop the background threads before taking their journal away
    bot_app(app).delivery.journal.close()
    (tmp_path / "journal.sqlite3").unlink()
    (tmp_path / "journal.sqlite3").mkdir()  # a directory where the database was: nothing can open it
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["/weather Paris"], "[text -> user alice] Sunny in Paris today, 19°C."),
        (["hello", "--as", "bob"], "[text -> user bob] Hello Bob! Type /help"),
        (["deploy status?", "--group", "ops"], "(no reply)"),
    ],
)
def test_flask_bot_say_runs_one_message_through_the_handlers(args, expected, live_settings, httpserver):
    app = app_module.create_app(live_settings)
    result = app.test_cli_runner().invoke(args=["bot", "say", *args])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith(expected)
    assert bot_app(app).wait_idle(5) and httpserver.log == []  # nothing went to CometChat
