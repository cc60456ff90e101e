"""``flask --app app bot register|unregister|status|check|chat`` against the fake CometChat API (pytest-httpserver).

The fake checks what is sent (method, path, ``apikey``, JSON body); the bots API answers with the Basic auth
password in clear text, so every test also checks that the password never reaches the output.
"""

from __future__ import annotations

import json
import sys
import tempfile
import textwrap
import uuid

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

import app as app_module
from bot.factory import bot_app
from tests.conftest import API_KEY, BOT_UID, PASSWORD, USERNAME

URL = "https://bots.example.org/cometchat/callback"
BOT_PATH = f"/v3/bots/{BOT_UID}"
USER_PATH = f"/v3/users/{BOT_UID}"
LOCAL_MODE = "set COMETCHAT_APP_ID, COMETCHAT_REGION, COMETCHAT_API_KEY and COMETCHAT_BOT_UID"

#: The bot as CometChat answers it: everything set, and the password in clear text.
BOT = {
    "uid": BOT_UID,
    "webhookURL": URL,
    "groupChatSetting": "mentionedMessages",
    "enabled": True,
    "useBasicAuth": True,
    "username": USERNAME,
    "password": PASSWORD,
    "createdAt": 1763000000,
}
ALREADY_EXISTS = {"error": {"code": "ERR_BOT_ALREADY_EXISTS", "message": f"The bot {BOT_UID} already exists."}}


def invoke(app, *args: str, input: str | None = None):
    return app.test_cli_runner().invoke(args=["bot", *args], input=input)


def requests_sent(server: HTTPServer) -> list[tuple[str, str, dict | None]]:
    """(method, path, JSON body or None) of every request the fake received, in order."""
    return [(r.method, r.path, json.loads(r.get_data()) if r.get_data() else None) for r, _ in server.log]


def assert_no_secret(result) -> None:
    assert PASSWORD not in result.output
    assert API_KEY not in result.output


def assert_clean_failure(result) -> None:
    """A non-zero exit with a message, not a traceback."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


@pytest.fixture
def app(live_settings):
    app = app_module.create_app(live_settings)
    yield app
    bot_app(app).wait_idle(5)


@pytest.fixture
def cometchat(httpserver: HTTPServer, api_answer):
    """cometchat(bot=..., user=...): a fake answering GET /bots/{uid} and GET /users/{uid}, checking the key.

    ``bot`` / ``user`` are the answers' data, or (status, sample name) for an error sample; a wrong ``apikey``
    header gets CometChat's 401 whatever the path.
    """

    def install(bot: dict | tuple = BOT, user: dict | tuple = {"uid": BOT_UID, "name": "Helpdesk"}) -> HTTPServer:  # noqa: B006
        def answer(data):
            def handler(request: Request) -> Response:
                if request.headers.get("apikey") != API_KEY:
                    status, _, body = api_answer("bad_apikey_401")
                elif isinstance(data, tuple):
                    status, _, body = api_answer(data[1])
                else:
                    status, body = 200, {"data": data}
                return Response(json.dumps(body), status=status, content_type="application/json")

            return handler

        httpserver.expect_request(BOT_PATH, method="GET").respond_with_handler(answer(bot))
        httpserver.expect_request(USER_PATH, method="GET").respond_with_handler(answer(user))
        return httpserver

    return install


# ------------------------------------------------------------------ register


@pytest.mark.parametrize(
    ("options", "group_setting", "enabled"),
    [
        ([], "mentionedMessages", True),  # CometChat's defaults (none, disabled) are never left to it
        (["--group-setting", "allMessages"], "allMessages", True),
        (["--group-setting", "none"], "none", True),
        (["--disabled"], "mentionedMessages", False),
    ],
)
def test_register_creates_the_bot_with_everything_set(options, group_setting, enabled, app, httpserver):
    httpserver.expect_request("/v3/bots", method="POST").respond_with_json({"data": BOT})

    result = invoke(app, "register", "--url", URL, *options)

    assert result.exit_code == 0, result.output
    [(request, _)] = httpserver.log
    assert (request.method, request.path) == ("POST", "/v3/bots")
    assert request.headers["apikey"] == API_KEY
    assert "onBehalfOf" not in request.headers
    assert json.loads(request.get_data()) == {
        "uid": BOT_UID,
        "webhookURL": URL,
        "groupChatSetting": group_setting,
        "useBasicAuth": True,
        "username": USERNAME,
        "password": PASSWORD,
        "enabled": enabled,
    }
    assert result.output.startswith(f"created bot {BOT_UID}: webhook {URL}, group messages: {group_setting}")
    assert ("disabled" in result.output) is not enabled
    assert_no_secret(result)


def test_register_updates_a_bot_that_already_exists(app, httpserver):
    httpserver.expect_ordered_request("/v3/bots", method="POST").respond_with_json(ALREADY_EXISTS, status=400)
    httpserver.expect_ordered_request(BOT_PATH, method="PUT").respond_with_json({"data": BOT})

    result = invoke(app, "register", "--url", URL, "--group-setting", "slashedMessages")

    assert result.exit_code == 0, result.output
    settings = {
        "webhookURL": URL,
        "groupChatSetting": "slashedMessages",
        "useBasicAuth": True,
        "username": USERNAME,
        "password": PASSWORD,
        "enabled": True,
    }
    assert requests_sent(httpserver) == [
        ("POST", "/v3/bots", {"uid": BOT_UID, **settings}),
        ("PUT", BOT_PATH, settings),  # uid cannot change: it is the path
    ]
    assert all(request.headers["apikey"] == API_KEY for request, _ in httpserver.log)
    assert result.output.startswith(f"updated bot {BOT_UID}:")
    assert_no_secret(result)


def test_register_explains_that_the_bot_user_must_exist_first(app, httpserver, api_answer):
    status, _, body = api_answer("uid_not_found_404")
    httpserver.expect_request("/v3/bots", method="POST").respond_with_json(body, status=status)

    result = invoke(app, "register", "--url", URL)

    assert_clean_failure(result)
    assert "ERR_UID_NOT_FOUND" in result.output
    assert f"CometChat has no user {BOT_UID!r}" in result.output
    assert "create the user first" in result.output and "POST /v3/users" in result.output
    assert len(result.output.strip().splitlines()) == 1  # one line
    assert [method for method, *_ in requests_sent(httpserver)] == ["POST"]  # not retried, not "updated"
    assert_no_secret(result)


@pytest.mark.parametrize(
    "url",
    [
        "http://bots.example.org/cometchat/callback",  # CometChat calls bots over HTTPS
        "ftp://bots.example.org/cometchat/callback",
        "bots.example.org/cometchat/callback",
        "https:///cometchat/callback",  # no host
        "https://bots.example.org/" + "x" * 240 + "/cometchat/callback",  # over CometChat's 255 characters
    ],
)
def test_register_refuses_a_url_cometchat_cannot_call(url, app, httpserver):
    result = invoke(app, "register", "--url", url)
    assert result.exit_code == 2, result.output
    assert "--url" in result.output
    assert httpserver.log == []


@pytest.mark.parametrize(
    ("url", "warning"),
    [
        (URL, None),
        (
            "https://bots.example.org/hooks/cometchat",
            "does not end with this app's CALLBACK_PATH '/cometchat/callback'",
        ),
        ("https://bots.example.org/cometchat/callback/", "does not end with this app's CALLBACK_PATH"),
        ("http://127.0.0.1:5000/cometchat/callback", "only suits tests"),
        ("http://localhost/cometchat/callback", "only suits tests"),
    ],
)
def test_register_warns_about_a_url_that_misses_the_callback(url, warning, app, httpserver):
    httpserver.expect_request("/v3/bots", method="POST").respond_with_json({"data": BOT})

    result = invoke(app, "register", "--url", url)

    assert result.exit_code == 0, result.output
    assert requests_sent(httpserver)[0][2]["webhookURL"] == url  # registered anyway (a proxy may rewrite it)
    if warning is None:
        assert result.stderr == ""
    else:
        assert result.stderr.startswith("warning: ") and warning in result.stderr


@pytest.mark.parametrize(
    ("setting", "value"),
    [("COMETCHAT_BOT_UID", "b" * 51), ("CALLBACK_USERNAME", "u" * 51), ("CALLBACK_PASSWORD", "p" * 64)],
)
def test_register_refuses_what_cometchat_would_not_store(setting, value, live_settings, httpserver):
    app = app_module.create_app({**live_settings, setting: value})

    result = invoke(app, "register", "--url", URL)

    assert_clean_failure(result)
    assert f"{setting} has {len(value)} characters; CometChat takes at most 50" in result.output
    assert value not in result.output
    assert httpserver.log == []


def test_register_refuses_without_callback_auth(live_settings, httpserver):
    settings = {**live_settings, "CALLBACK_USERNAME": "", "CALLBACK_PASSWORD": ""}
    app = app_module.create_app({**settings, "ALLOW_UNAUTHENTICATED_CALLBACKS": "true"})

    result = invoke(app, "register", "--url", URL)

    assert_clean_failure(result)
    assert "set CALLBACK_USERNAME and CALLBACK_PASSWORD first" in result.output
    assert httpserver.log == []


def test_register_reports_a_wrong_api_key_in_one_line(live_settings, httpserver, api_answer):
    status, _, body = api_answer("bad_apikey_401")
    httpserver.expect_request("/v3/bots", method="POST").respond_with_json(body, status=status)
    app = app_module.create_app({**live_settings, "COMETCHAT_API_KEY": "not-the-key"})

    result = invoke(app, "register", "--url", URL)

    assert_clean_failure(result)
    assert result.output.strip().splitlines() == [
        "Error: CometChat: AUTH_ERR_APIKEY_NOT_FOUND (HTTP 401): The apiKey provided is not valid. "
        "-> the REST API key is wrong: check COMETCHAT_API_KEY (and that COMETCHAT_APP_ID is its app)"
    ]
    assert "not-the-key" not in result.output


# ------------------------------------------------------------------ unregister


@pytest.mark.parametrize(
    ("options", "expected_request", "said"),
    [
        ([], ("DELETE", BOT_PATH, None), f"deleted bot {BOT_UID} (its user remains)"),
        (["--disable-only"], ("PUT", BOT_PATH, {"enabled": False}), f"disabled bot {BOT_UID}"),
    ],
)
def test_unregister_deletes_or_disables_the_bot(options, expected_request, said, app, httpserver):
    httpserver.expect_request(BOT_PATH, method=expected_request[0]).respond_with_json({"data": {"success": True}})

    result = invoke(app, "unregister", *options)

    assert result.exit_code == 0, result.output
    assert requests_sent(httpserver) == [expected_request]
    assert httpserver.log[0][0].headers["apikey"] == API_KEY
    assert result.output.startswith(said)


def test_unregister_an_unknown_bot_says_how_to_register_it(app, httpserver, api_answer):
    status, _, body = api_answer("bot_not_found_404")
    httpserver.expect_request(BOT_PATH, method="DELETE").respond_with_json(body, status=status)

    result = invoke(app, "unregister")

    assert_clean_failure(result)
    assert "ERR_BOT_NOT_FOUND" in result.output
    assert "flask --app app bot register --url https://<your-host>/cometchat/callback" in result.output


# ------------------------------------------------------------------ status


def status_rows(result) -> dict[str, str]:
    """{row name: value} of `status`'s output (names are padded to 14 characters)."""
    return {line[:14].strip(): line[15:] for line in result.output.splitlines()}


ALL_SET = {
    "uid": BOT_UID,
    "webhook URL": URL,
    "group setting": "mentionedMessages",
    "enabled": "yes",
    "basic auth": "on",
    "username": "matches CALLBACK_USERNAME",
    "password": "matches CALLBACK_PASSWORD",
}


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (BOT, ALL_SET),
        (
            {**BOT, "username": "someone-else", "password": "an-older-password"},
            {**ALL_SET, "username": "differs from CALLBACK_USERNAME", "password": "differs from CALLBACK_PASSWORD"},
        ),
        (
            # CometChat leaves out what is false or empty; a bot whose auth was switched off keeps its credentials
            {"uid": BOT_UID, "webhookURL": URL, "username": USERNAME, "password": PASSWORD, "createdAt": 1},
            {**ALL_SET, "group setting": "none", "enabled": "no", "basic auth": "off"},
        ),
        (
            {"uid": BOT_UID, "createdAt": 1},
            {
                **ALL_SET,
                "webhook URL": "(none)",
                "group setting": "none",
                "enabled": "no",
                "basic auth": "off",
                "username": "not set",
                "password": "not set",
            },
        ),
    ],
    ids=["all-set", "credentials-differ", "omitted-fields", "nothing-set"],
)
def test_status_shows_the_bot_and_compares_its_credentials(stored, expected, app, cometchat):
    server = cometchat(bot=stored)

    result = invoke(app, "status")

    assert result.exit_code == 0, result.output
    assert status_rows(result) == expected
    assert requests_sent(server) == [("GET", BOT_PATH, None)]
    assert_no_secret(result)
    assert "an-older-password" not in result.output and "someone-else" not in result.output


def test_status_of_a_missing_bot_is_one_clear_line(app, cometchat):
    cometchat(bot=(404, "bot_not_found_404"))
    result = invoke(app, "status")
    assert_clean_failure(result)
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: CometChat: ERR_BOT_NOT_FOUND (HTTP 404)") and "bot register --url" in line


# ------------------------------------------------------------------ check


def check_lines(result) -> dict[str, tuple[str, str]]:
    """{check name: (ok|FAIL|skip, the rest of its line)}."""
    lines = {}
    for line in result.output.splitlines():
        mark, name, rest = line.split(None, 2)
        lines[name] = (mark, rest)
    return lines


def test_check_passes_on_a_good_setup(app, cometchat):
    server = cometchat()

    result = invoke(app, "check")

    assert result.exit_code == 0, result.output
    lines = check_lines(result)
    assert list(lines) == ["settings", "api", "bot", "user"]
    assert {mark for mark, _ in lines.values()} == {"ok"}
    assert lines["bot"][1] == f"enabled, webhook {URL}, group messages: mentionedMessages, Basic auth matches"
    assert lines["user"][1] == f"user {BOT_UID} exists (Helpdesk)"
    assert requests_sent(server) == [("GET", BOT_PATH, None), ("GET", USER_PATH, None)]
    assert all(request.headers["apikey"] == API_KEY for request, _ in server.log)
    assert_no_secret(result)


def test_check_fails_with_a_wrong_api_key(live_settings, cometchat):
    server = cometchat()
    app = app_module.create_app({**live_settings, "COMETCHAT_API_KEY": "a-wrong-key"})

    result = invoke(app, "check")

    assert result.exit_code == 1, result.output
    lines = check_lines(result)
    assert lines["settings"][0] == "ok"
    assert lines["api"][0] == "FAIL" and "AUTH_ERR_APIKEY_NOT_FOUND" in lines["api"][1]
    assert "-> the REST API key is wrong" in lines["api"][1]
    assert lines["bot"][0] == lines["user"][0] == "skip"
    assert len(server.log) == 1  # a 401 is not retried, and nothing else is tried with that key
    assert "a-wrong-key" not in result.output


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        ({**BOT, "enabled": False}, "disabled"),
        ({k: v for k, v in BOT.items() if k != "enabled"}, "disabled"),  # omitted: false
        ({**BOT, "webhookURL": "https://bots.example.org/old-hook"}, "does not end with /cometchat/callback"),
        ({**BOT, "useBasicAuth": False}, "Basic auth is off"),
        ({**BOT, "password": "an-older-password"}, "Basic auth password differs from CALLBACK_PASSWORD"),
        ({**BOT, "username": "someone-else"}, "Basic auth username differs from CALLBACK_USERNAME"),
        ((404, "bot_not_found_404"), "'helpdesk-bot' is not a bot of this app"),
    ],
)
def test_check_fails_on_a_misconfigured_bot(stored, problem, app, cometchat):
    cometchat(bot=stored)

    result = invoke(app, "check")

    assert result.exit_code == 1, result.output
    lines = check_lines(result)
    assert lines["api"][0] == "ok" and lines["user"][0] == "ok"
    mark, rest = lines["bot"]
    assert mark == "FAIL" and problem in rest
    assert "-> run `flask --app app bot register --url " in rest
    assert_no_secret(result)
    assert "an-older-password" not in result.output


def test_check_suggests_the_registered_url_when_only_settings_are_off(app, cometchat):
    cometchat(bot={**BOT, "enabled": False})
    mark, rest = check_lines(invoke(app, "check"))["bot"]
    assert mark == "FAIL"
    assert rest.endswith(f"-> run `flask --app app bot register --url {URL}`")


def test_check_fails_when_the_bot_user_is_gone(app, cometchat):
    cometchat(user=(404, "uid_not_found_404"))

    result = invoke(app, "check")

    assert result.exit_code == 1, result.output
    mark, rest = check_lines(result)["user"]
    assert mark == "FAIL" and "ERR_UID_NOT_FOUND" in rest and "create the user first" in rest


def test_check_fails_without_callback_auth(live_settings, cometchat):
    cometchat(bot={k: v for k, v in BOT.items() if k not in ("username", "password", "useBasicAuth")})
    settings = {**live_settings, "CALLBACK_USERNAME": "", "CALLBACK_PASSWORD": ""}
    app = app_module.create_app({**settings, "ALLOW_UNAUTHENTICATED_CALLBACKS": "true"})

    result = invoke(app, "check")

    assert result.exit_code == 1, result.output
    lines = check_lines(result)
    assert lines["settings"] == (
        "FAIL",
        "the callback takes unauthenticated requests -> set CALLBACK_USERNAME and CALLBACK_PASSWORD",
    )
    assert lines["api"][0] == "ok"


def test_check_fails_when_cometchat_does_not_answer(live_settings):
    from tests.test_client import closed_port

    url = f"http://127.0.0.1:{closed_port()}/v3"
    app = app_module.create_app({**live_settings, "COMETCHAT_API_URL": url, "COMETCHAT_MAX_RETRIES": "0"})

    result = invoke(app, "check")

    assert result.exit_code == 1, result.output
    mark, rest = check_lines(result)["api"]
    assert mark == "FAIL" and "ERR_TRANSPORT" in rest and f"CometChat did not answer at {url}" in rest


# ------------------------------------------------------------------ local mode


@pytest.mark.parametrize(
    "args", [["register", "--url", URL], ["unregister"], ["unregister", "--disable-only"], ["status"], ["check"]]
)
def test_commands_that_need_cometchat_fail_clearly_in_local_mode(args):
    app = app_module.create_app()

    result = invoke(app, *args)

    assert_clean_failure(result)
    assert result.exit_code == 1
    assert LOCAL_MODE in result.output


# ------------------------------------------------------------------ chat


def test_chat_runs_each_line_through_the_handlers_in_order(app, httpserver):
    lines = [
        "/weather Paris",
        "hello",
        ":as bob",
        "hello",
        ":group ops",
        "deploy status?",  # group chatter not meant for the bot
        "@bot",
        ":dm",
        "what is the weather in Paris?",
        ":what",
        ":quit",
        "hello",  # after :quit: never read
    ]

    result = invoke(app, "chat", input="\n".join(lines) + "\n")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == [
        "[text -> user alice] Sunny in Paris today, 19°C.",
        "[text -> user alice] Hello Alice! Type /help to see what I can do.",
        "(now bob to the bot)",
        "[text -> user bob] Hello Bob! Type /help to see what I can do.",
        "(now bob in group ops)",
        "(no reply)",
        "[text -> group ops] Yes, Bob? Ask me about the weather (/weather Paris) or type /help.",
        "(now bob to the bot)",
        "[text -> user bob] Sunny in Paris today, 19°C.",
        "unknown command ':what': :as UID (sender), :group GUID, :dm (1:1 with the bot), :quit (or end of input)",
    ]
    assert bot_app(app).wait_idle(5) and httpserver.log == []  # nothing went to CometChat


def test_chat_ends_at_end_of_input_and_starts_as_the_given_user_and_group():
    app = app_module.create_app()

    result = invoke(app, "chat", "--as", "zoe", "--group", "ops", input="@bot\n\n/help")

    assert result.exit_code == 0, result.output
    replies = result.output.splitlines()[1:]
    assert replies[0] == "[text -> group ops] Yes, Zoe? Ask me about the weather (/weather Paris) or type /help."
    assert replies[1] == "[text -> group ops] I can:"  # the empty line was skipped; a multi-line reply follows
    assert "answer in groups when you mention me" in replies[-1]


DIALOG_BOTS = """
    from bot import Router

    bot = Router()


    @bot.on_command("book")
    def book(msg):
        msg.state.step = "ask_city"
        return "Which city?"


    @bot.on_text(r".+", state="ask_city")
    def city(msg):
        msg.state.step = None
        return f"Booked {msg.text}."
"""


@pytest.fixture
def dialog_bots(tmp_path, monkeypatch) -> str:
    """A bots package with a two-step dialog kept in the conversation's state (a fresh name: modules are cached)."""
    package = tmp_path / f"dialog_bots_{uuid.uuid4().hex[:12]}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "booking.py").write_text(textwrap.dedent(DIALOG_BOTS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package.name
    for module in [name for name in sys.modules if name.split(".")[0] == package.name]:
        del sys.modules[module]


def test_chat_keeps_the_conversation_state_between_lines(dialog_bots):
    app = app_module.create_app({"BOTS_PACKAGE": dialog_bots})

    result = invoke(app, "chat", input="/book\nParis\nLyon\n:as bob\nParis\n")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == [
        "[text -> user alice] Which city?",
        "[text -> user alice] Booked Paris.",  # the step set by the first line
        "(no reply)",  # the dialog is over
        "(now bob to the bot)",
        "(no reply)",  # bob's conversation has no dialog going on
    ]


@pytest.mark.parametrize(("args", "input"), [(["say", "hello"], None), (["chat"], "hello\n/help\n")])
def test_say_and_chat_leave_no_temporary_files(args, input, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where tempfile makes its folders
    app = app_module.create_app()

    result = invoke(app, *args, input=input)

    assert result.exit_code == 0, result.output
    assert "Hello Alice!" in result.output  # the handlers ran, with a journal in a temporary folder
    assert list(scratch.iterdir()) == []
