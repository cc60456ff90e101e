"""The playground's JSON API on the real app in local mode: every message goes through the real callback path.

(The page itself is driven by a real browser in tests/test_playground_browser.py.)
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import app as app_module
from bot.factory import bot_app
from bots import weather

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def local_app(tmp_path):
    app = app_module.create_app({"JOURNAL_PATH": str(tmp_path / "journal.sqlite3")})
    yield app
    bot_app(app).wait_idle(5)


@pytest.fixture
def http(local_app):
    return local_app.test_client()


def say(http, text: str, *, sender: str = "alice", receiver: str = "bot", receiver_type: str = "user", **extra):
    response = http.post(
        "/playground/api/messages",
        json={"sender": sender, "receiver": receiver, "receiverType": receiver_type, "type": "text", "text": text,
              **extra},
    )  # fmt: skip
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def bot_messages(http, app, since: int = 0) -> list[dict]:
    """The bot's messages once everything accepted is handled and delivered."""
    assert bot_app(app).wait_idle(5)
    messages = http.get(f"/playground/api/updates?since={since}").get_json()["messages"]
    return [m for m in messages if m["sender"] == "bot"]


def test_the_page_and_its_state(http):
    assert http.get("/").headers["Location"].endswith("/playground")
    page = http.get("/playground")
    assert page.status_code == 200 and page.mimetype == "text/html"
    state = http.get("/playground/api/state").get_json()
    assert state["bot"]["uid"] == "bot" and {u["uid"] for u in state["users"]} >= {"alice", "bob", "carol"}
    assert state["groups"][0]["guid"] == "team" and state["groups"][0]["botIsMember"] is True
    assert state["groupChatSetting"] == "allMessages"


def test_a_message_goes_through_the_callback_and_the_reply_comes_back(http, local_app):
    sent = say(http, "/weather Paris")
    assert sent["relayed"] == 200 and sent["message"]["conversationId"] == "alice_user_bot"
    [reply] = bot_messages(http, local_app)
    assert reply["data"]["text"] == weather.forecast("Paris")
    assert (reply["receiver"], reply["conversationId"]) == ("alice", "alice_user_bot")
    assert reply["data"]["metadata"] == {"@bot": "bot"}


def test_callback_auth_applies_to_the_playground_too(tmp_path):
    settings = {"JOURNAL_PATH": str(tmp_path / "j.sqlite3"), "CALLBACK_USERNAME": "u", "CALLBACK_PASSWORD": "p"}
    app = app_module.create_app(settings)
    http = app.test_client()
    assert say(http, "hello")["relayed"] == 200  # the emulator posts with the configured Basic auth
    assert http.post("/cometchat/callback", json={}).status_code == 401  # others still need it
    assert [m["data"]["text"] for m in bot_messages(http, app)] == ["Hello Alice! Type /help to see what I can do."]


def test_a_form_is_submitted_through_the_interaction_endpoint(http, local_app):
    say(http, "/book")
    say(http, "Lisbon")
    form = next(m for m in bot_messages(http, local_app) if m["category"] == "interactive")
    submit = form["data"]["interactiveData"]["submitElement"]
    action = submit["action"]
    assert action["url"] == "/cometchat/interactions"  # same origin as the playground in local mode
    body = {
        "payload": action["payload"],
        "trigger": "ui_message_interacted",
        "data": {"messageId": form["id"], "interactedBy": "alice", "interactedElementId": submit["elementId"],
                 "messageType": "form", "formData": {"name": "Ana", "time": "19:00", "party": "2"}},
    }  # fmt: skip
    assert http.post(action["url"], json=body).status_code == 200
    done = bot_messages(http, local_app)
    assert done[-1]["data"]["text"] == "Booked: a table for 2 people in Lisbon at 19:00, under Ana. See you!"
    # The bot marked the form interacted for Alice, through the emulated REST API.
    marked = http.get("/playground/api/updates?since=0").get_json()["messages"]
    assert next(m for m in marked if m["id"] == form["id"])["interactions"] == {"alice": ["submit"]}
    # Bob cannot submit Alice's form.
    wrong = http.post(action["url"], json={**body, "data": {**body["data"], "interactedBy": "bob"}})
    assert (wrong.status_code, wrong.get_json()["error"]["code"]) == (403, "wrong_submitter")


def test_uploaded_images_reach_the_bot_and_come_back(http, local_app):
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    uploaded = http.post("/playground/api/uploads", data={"file": (io.BytesIO(png), "cat.png", "image/png")})
    assert uploaded.status_code == 201
    attachment = uploaded.get_json()
    assert attachment["name"] == "cat.png" and attachment["mimeType"] == "image/png" and attachment["size"] == 72
    assert http.get(attachment["url"].replace("http://localhost", "")).data == png
    http.post(
        "/playground/api/messages",
        json={"sender": "alice", "receiver": "bot", "receiverType": "user", "type": "image",
              "attachments": [attachment]},
    )  # fmt: skip
    texts, image = bot_messages(http, local_app)
    assert texts["data"]["text"] == "Nice picture, Alice!"
    assert image["type"] == "image" and image["data"]["attachments"][0]["url"] == attachment["url"]


def test_group_setting_and_membership_decide_what_the_bot_sees(http, local_app):
    assert http.put("/playground/api/settings", json={"groupChatSetting": "slashedMessages"}).status_code == 200
    assert say(http, "hello all", receiver="team", receiver_type="group")["relayed"] is None
    assert say(http, "/weather Rome", receiver="team", receiver_type="group")["relayed"] == 200
    assert bot_app(local_app).wait_idle(5)  # the bot answered while still a member
    http.put("/playground/api/groups/team/members/bot", json={"member": False})
    assert say(http, "/weather Oslo", receiver="team", receiver_type="group")["relayed"] is None
    [reply] = bot_messages(http, local_app)
    assert reply["data"]["text"] == weather.forecast("Rome") and reply["receiver"] == "team"


def test_new_users_and_groups(http):
    assert http.post("/playground/api/users", json={"uid": "Dora", "name": "Dora D."}).get_json()["uid"] == "dora"
    created = http.post("/playground/api/groups", json={"guid": "ops", "name": "Ops", "creator": "dora"})
    assert created.status_code == 201
    group = created.get_json()
    assert group == {"guid": "ops", "name": "Ops", "members": ["bot", "dora"]}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/playground/api/messages", {"sender": "alice"}, 400),
        ("post", "/playground/api/messages", "nope", 400),
        (
            "post",
            "/playground/api/messages",
            {"sender": "alice", "receiver": "bot", "receiverType": "user", "type": "text", "text": ""},
            400,
        ),
        ("put", "/playground/api/settings", {"groupChatSetting": "everything"}, 400),
        (
            "post",
            "/playground/api/messages",
            {"sender": "alice", "receiver": "bot", "receiverType": "user", "type": "image", "attachments": ["x"]},
            400,
        ),
        ("put", "/playground/api/groups/team/members/bot", {"member": "yes"}, 400),
        ("post", "/playground/api/uploads", None, 400),
        ("get", "/playground/api/updates?since=x", None, 400),
    ],
)
def test_bad_requests_get_a_json_error(http, method, path, body, status):
    response = getattr(http, method)(path, json=body) if body is not None else getattr(http, method)(path)
    assert response.status_code == status
    assert response.get_json()["error"]["message"]


def test_updates_wait_for_a_change_and_no_longer(http):
    version = http.get("/playground/api/state").get_json()["version"]
    assert http.get(f"/playground/api/updates?since={version}&wait=0.05").get_json() == {
        "version": version,
        "messages": [],
    }


@pytest.mark.parametrize(
    "settings",
    [
        {"PLAYGROUND": "off"},
        {
            "COMETCHAT_APP_ID": "a",
            "COMETCHAT_REGION": "eu",
            "COMETCHAT_API_KEY": "k",
            "COMETCHAT_BOT_UID": "b",
            "CALLBACK_USERNAME": "u",
            "CALLBACK_PASSWORD": "p",
        },
    ],
    ids=["switched-off", "live-mode"],
)
def test_no_playground_when_switched_off_or_with_cometchat_credentials(tmp_path, settings):
    app = app_module.create_app({"JOURNAL_PATH": str(tmp_path / "j.sqlite3"), **settings})
    http = app.test_client()
    assert http.get("/playground").status_code == 404
    assert http.post("/playground/api/messages", json={}).status_code == 404


@pytest.mark.parametrize(
    ("name", "body", "disposition"),
    [
        ("cat.png", b"\x89PNG\r\n\x1a\n", "inline"),
        ("page.html", b"<script>alert(1)</script>", "attachment"),
        ("logo.svg", b"<svg onload='alert(1)'/>", "attachment"),
    ],
)
def test_uploads_never_run_as_the_pages_origin(http, name, body, disposition):
    url = http.post("/playground/api/uploads", data={"file": (io.BytesIO(body), name)}).get_json()["url"]
    served = http.get(url.replace("http://localhost", ""))
    assert served.data == body
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.headers["Content-Security-Policy"] == "sandbox"
    assert served.headers.get("Content-Disposition", "inline").split(";")[0] == disposition


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/playground/api/users", {"uid": "Bad Uid!"}, 400, "bad_request"),
        ("/playground/api/users", {"uid": "bot", "name": "Evil"}, 409, "ERR_UID_ALREADY_EXISTS"),
        ("/playground/api/groups", {"guid": "team", "name": "Again"}, 409, "ERR_GUID_ALREADY_EXISTS"),
        ("/playground/api/groups", {"guid": "no spaces"}, 400, "bad_request"),
    ],
)
def test_users_and_groups_are_named_as_cometchat_names_them(http, path, body, status, code):
    response = http.post(path, json=body)
    assert (response.status_code, response.get_json()["error"]["code"]) == (status, code)
    state = http.get("/playground/api/state").get_json()
    assert state["bot"]["name"] == "Bot" and [g["name"] for g in state["groups"]] == ["Team"]


def test_mentions_of_unknown_uids_create_no_users(http):
    say(http, "hi <@uid:ghost> and <@uid:bob>")
    assert "ghost" not in {u["uid"] for u in http.get("/playground/api/state").get_json()["users"]}


def test_by_default_the_playground_answers_only_on_this_machine(tmp_path):
    app = app_module.create_app({"JOURNAL_PATH": str(tmp_path / "j.sqlite3")})
    http = app.test_client()
    away = {"REMOTE_ADDR": "203.0.113.7"}
    refused = http.get("/playground/api/state", environ_overrides=away)
    assert refused.status_code == 403 and "PLAYGROUND=all" in refused.get_json()["error"]["message"]
    assert http.get("/playground", environ_overrides={"REMOTE_ADDR": "::1"}).status_code == 200
    opened = app_module.create_app({"JOURNAL_PATH": str(tmp_path / "k.sqlite3"), "PLAYGROUND": "all"})
    assert opened.test_client().get("/playground/api/state", environ_overrides=away).status_code == 200


#: Run in a child process: one upload, then a normal exit. argv: the temporary folder to use, the journal's path.
UPLOAD_AND_EXIT = """
import io, json, os, sys, tempfile
tempfile.tempdir = sys.argv[1]
import app
http = app.create_app({"JOURNAL_PATH": sys.argv[2]}).test_client()
missing = http.get("/playground/files/none.png").status_code
before = os.listdir(sys.argv[1])
status = http.post("/playground/api/uploads", data={"file": (io.BytesIO(b"hi"), "a.txt")}).status_code
print(json.dumps({"missing": missing, "before": before, "status": status, "after": os.listdir(sys.argv[1])}))
"""


def test_uploads_get_a_folder_at_the_first_upload_removed_when_the_process_exits(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", UPLOAD_AND_EXIT, str(scratch), str(tmp_path / "journal.sqlite3")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.splitlines()[-1])
    assert seen["missing"] == 404 and seen["before"] == [] and seen["status"] == 201
    assert [name.startswith("bot-playground-") for name in seen["after"]] == [True]
    assert list(scratch.iterdir()) == []  # removed at exit
