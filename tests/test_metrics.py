"""/metrics: callbacks by outcome, handler and send times, send errors by CometChat code, lookups, queue depth."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug import Request, Response

from bot.factory import bot_app
from tests.conftest import BOT_UID

CALLBACK = "/cometchat/callback"


def scrape(app) -> dict[tuple[str, tuple], float]:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def post(app, body, headers):
    return app.test_client().post(
        CALLBACK, data=json.dumps(body), headers={"Content-Type": "application/json", **headers}
    )


def test_callbacks_handlers_and_sends_are_counted(live_app, fake_api, payload, basic_auth):
    assert post(live_app, payload("text_user"), basic_auth).status_code == 200  # two replies
    assert post(live_app, payload("text_user"), basic_auth).status_code == 200  # redelivered
    assert post(live_app, payload("from_bot_itself"), basic_auth).status_code == 200
    assert post(live_app, payload("text_user"), {}).status_code == 401
    assert bot_app(live_app).wait_idle(10)
    m = scrape(live_app)
    outcomes = {k[1][0][1]: v for k, v in m.items() if k[0] == "cometchat_bot_callbacks_total"}
    assert outcomes == {"accepted": 1, "duplicate": 1, "ignored": 1, "rejected_401": 1}
    assert m[("cometchat_bot_handler_seconds_count", (("outcome", "replied"),))] == 1
    assert m[("cometchat_bot_send_seconds_count", ())] == len(fake_api.log) == 2
    assert m[("cometchat_bot_delivery_seconds_count", ())] == 2
    assert m[("cometchat_bot_queue", (("state", "inbox"),))] == 0
    assert not any(k[0] == "cometchat_bot_send_errors_total" for k in m)


def test_send_errors_by_code_and_dead_letters(live_app, httpserver, api_answer, payload, basic_auth):
    status, headers, body = api_answer("uid_not_found_404")
    httpserver.expect_request(f"/v3/bots/{BOT_UID}/messages").respond_with_json(body, status=status, headers=headers)
    callback = payload("text_user")
    callback["data"]["data"]["text"] = "hello"  # one reply
    assert post(live_app, callback, basic_auth).status_code == 200
    assert bot_app(live_app).wait_idle(10)
    m = scrape(live_app)
    assert m[("cometchat_bot_send_errors_total", (("code", "ERR_UID_NOT_FOUND"),))] == 1
    assert m[("cometchat_bot_queue", (("state", "dead_letters"),))] == 1
    assert ("cometchat_bot_delivery_seconds_count", ()) in m and m[("cometchat_bot_delivery_seconds_count", ())] == 0


def test_a_body_refused_while_reading_is_counted_as_a_rejection(live_app, payload, basic_auth):
    callback = payload("text_user")
    callback["data"]["data"]["text"] = "x" * (bot_app(live_app).settings.callback_max_bytes + 1)
    assert post(live_app, callback, basic_auth).status_code == 413
    m = scrape(live_app)
    assert m[("cometchat_bot_callbacks_total", (("outcome", "rejected_413"),))] == 1


@pytest.mark.parametrize("lookup_fails", [False, True], ids=["found", "lookup failed"])
def test_lookups_of_replies_in_doubt_are_counted_apart_from_sends(
    live_app, httpserver, payload, basic_auth, lookup_fails
):
    taken: list[dict] = []

    def answer_lost(request: Request) -> Response:  # CometChat took the reply; a gateway answered 504
        taken.append(request.get_json())
        return Response("<html>504 Gateway Time-out</html>", status=504)

    def list_messages(request: Request) -> Response:
        if lookup_fails:
            return Response('{"error": {"code": "ERR_MISSION_FAILED"}}', status=500, content_type="application/json")
        return Response(json.dumps({"data": [{**body, "id": "1"} for body in taken]}), content_type="application/json")

    messages = f"/v3/bots/{BOT_UID}/messages"
    httpserver.expect_oneshot_request(messages, method="POST").respond_with_handler(answer_lost)
    httpserver.expect_request(messages, method="POST").respond_with_json({"data": {"id": "2"}})  # sent again
    httpserver.expect_request("/v3/messages", method="GET").respond_with_handler(list_messages)
    callback = payload("text_user")
    callback["data"]["data"]["text"] = "hello"  # one reply
    assert post(live_app, callback, basic_auth).status_code == 200
    assert bot_app(live_app).wait_idle(10)

    m = scrape(live_app)
    posts = 2 if lookup_fails else 1  # not found out: sent again
    assert m[("cometchat_bot_send_seconds_count", ())] == posts
    assert m[("cometchat_bot_send_errors_total", (("code", "HTTP_504"),))] == 1
    assert m[("cometchat_bot_lookup_seconds_count", ())] == 1
    errors = {k[1]: v for k, v in m.items() if k[0] == "cometchat_bot_lookup_errors_total"}
    assert errors == ({(("code", "ERR_MISSION_FAILED"),): 1} if lookup_fails else {})
    assert m[("cometchat_bot_replies_found_delivered_total", ())] == (0 if lookup_fails else 1)
