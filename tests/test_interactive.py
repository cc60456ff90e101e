"""Interactive replies (bot/interactive.py): their CometChat JSON (PLATFORM.md 5.2), actions and validation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bot.interactive import (
    Button,
    Card,
    Checkbox,
    CustomInteractive,
    Dropdown,
    Form,
    InteractionGoal,
    Label,
    Scheduler,
    SingleSelect,
    SubmitButton,
    TextInput,
    UrlButton,
    interaction_goal,
)
from bot.message import Target
from bot.replies import MAX_DATA_BYTES, ReplyContext, build_requests
from bot.testing import make_message


class ActionStub:
    """Stands in for the framework's ``api_action``: records its calls, returns an action naming them.

    ``ReplyContext.api_action`` takes (interaction id, element id); ``build_requests`` passes the reply's muid and
    thread too.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.muids: list[str | None] = []
        self.threads: list[str | None] = []

    def __call__(self, interaction_id: str, element_id: str, muid: str | None = None, thread: str | None = None):
        self.calls.append((interaction_id, element_id))
        self.muids.append(muid)
        self.threads.append(thread)
        return action(interaction_id, element_id)


def action(interaction_id: str, element_id: str) -> dict:
    return {
        "actionType": "apiAction",
        "url": "https://bot.example.org/cometchat/interactions",
        "method": "POST",
        "payload": {"token": f"tok:{interaction_id}:{element_id}"},
        "headers": {"Content-Type": "application/json"},
        "dataKey": "CometChatData",
    }


@pytest.fixture
def stub() -> ActionStub:
    return ActionStub()


@pytest.fixture
def ctx(stub) -> ReplyContext:
    return ReplyContext(Target("alice", "user"), "bot", "muid-1", api_action=stub)


NO_ACTIONS = ReplyContext(Target("alice", "user"), "bot", "muid-1")


def demo_form(**kwargs) -> Form:
    """The form of PLATFORM.md 5.2, built with the builders."""
    return Form(
        "demo",
        "Book a demo",
        [
            TextInput("name", "Name", placeholder="Your name"),
            Dropdown("country", "Country", [("de", "Germany"), ("in", "India")], default="de"),
            Checkbox("topics", "Topics", {"api": "API", "ui": "UI kits"}, default=["api"], optional=True),
            SingleSelect("size", "Team size", [("s", "1-10"), ("m", "11-50")], default="s"),
            UrlButton("docs", "Docs", "https://example.org/docs"),
        ],
        goal_completion_text="Thanks, we got it",
        **kwargs,
    )


def test_form_json_matches_cometchats_schema(ctx, stub):
    assert demo_form().data(ctx) == {
        "interactiveData": {
            "title": "Book a demo",
            "goalCompletionText": "Thanks, we got it",
            "formFields": [
                {"elementType": "textInput", "elementId": "name", "label": "Name", "optional": False, "maxLines": 1,
                 "placeholder": {"text": "Your name"}},
                {"elementType": "dropdown", "elementId": "country", "label": "Country", "optional": False,
                 "defaultValue": "de", "options": [{"value": "de", "label": "Germany"},
                                                   {"value": "in", "label": "India"}]},
                {"elementType": "checkbox", "elementId": "topics", "label": "Topics", "optional": True,
                 "defaultValue": ["api"], "options": [{"value": "api", "label": "API"},
                                                      {"value": "ui", "label": "UI kits"}]},
                {"elementType": "singleSelect", "elementId": "size", "label": "Team size", "optional": False,
                 "defaultValue": "s", "options": [{"value": "s", "label": "1-10"}, {"value": "m", "label": "11-50"}]},
                {"elementType": "button", "elementId": "docs", "buttonText": "Docs", "disableAfterInteracted": False,
                 "action": {"actionType": "urlNavigation", "url": "https://example.org/docs"}},
            ],
            "submitElement": {
                "elementType": "button", "elementId": "submit", "buttonText": "Submit",
                "disableAfterInteracted": True, "action": action("demo", "submit"),
            },
        },
        "interactionGoal": {"type": "anyOf", "elementIds": ["submit"]},
        "allowSenderInteraction": False,
    }  # fmt: skip
    assert stub.calls == [("demo", "submit")]  # the URL button needs no action from the framework


def test_form_text_input_defaults_labels_and_a_custom_submit_button(ctx, stub):
    form = Form(
        "feedback",
        "Feedback",
        [
            Label("intro", "Tell us what you think."),
            TextInput("comment", "Comment", optional=True, max_lines=4, default="Great"),
            Button("skip", "Skip", disable_after_interacted=True),
        ],
        submit=SubmitButton("Send", disable_after_interacted=False, id="send"),
        allow_sender_interaction=True,
    )
    data = form.data(ctx)
    assert data["interactiveData"]["formFields"] == [
        {"elementType": "label", "elementId": "intro", "text": "Tell us what you think."},
        {"elementType": "textInput", "elementId": "comment", "label": "Comment", "optional": True, "maxLines": 4,
         "defaultValue": "Great"},
        {"elementType": "button", "elementId": "skip", "buttonText": "Skip", "disableAfterInteracted": True,
         "action": action("feedback", "skip")},
    ]  # fmt: skip
    assert data["interactiveData"]["submitElement"] == {
        "elementType": "button", "elementId": "send", "buttonText": "Send", "disableAfterInteracted": False,
        "action": action("feedback", "send"),
    }  # fmt: skip
    assert "goalCompletionText" not in data["interactiveData"]
    assert data["interactionGoal"] == {"type": "anyOf", "elementIds": ["send"]}
    assert data["allowSenderInteraction"] is True
    assert stub.calls == [("feedback", "skip"), ("feedback", "send")]


def test_submit_given_as_text_becomes_the_submit_button(ctx):
    form = Form("f", "T", [TextInput("a", "A")], submit="Book")
    assert form.submit == SubmitButton("Book")
    assert form.data(ctx)["interactiveData"]["submitElement"]["buttonText"] == "Book"


def test_card_json_and_its_actions(ctx, stub):
    card = Card(
        "plan",
        "Pick a plan",
        image_url="https://cdn.example.org/plans.png",
        buttons=[Button("basic", "Basic"), Button("pro", "Pro", True), UrlButton("compare", "Compare", "http://x.org")],
    )
    assert card.data(ctx) == {
        "interactiveData": {
            "imageUrl": "https://cdn.example.org/plans.png",
            "text": "Pick a plan",
            "cardActions": [
                {"elementType": "button", "elementId": "basic", "buttonText": "Basic", "disableAfterInteracted": False,
                 "action": action("plan", "basic")},
                {"elementType": "button", "elementId": "pro", "buttonText": "Pro", "disableAfterInteracted": True,
                 "action": action("plan", "pro")},
                {"elementType": "button", "elementId": "compare", "buttonText": "Compare",
                 "disableAfterInteracted": False, "action": {"actionType": "urlNavigation", "url": "http://x.org"}},
            ],
        },
        "interactionGoal": {"type": "anyOf", "elementIds": ["basic", "pro"]},
        "allowSenderInteraction": False,
    }  # fmt: skip
    assert stub.calls == [("plan", "basic"), ("plan", "pro")]


def test_a_card_with_only_url_buttons_needs_no_actions_and_has_goal_none():
    card = Card("news", "Read the release notes", buttons=[UrlButton("notes", "Open", "https://x.org/notes")])
    data = card.data(NO_ACTIONS)
    assert data["interactionGoal"] == {"type": "none", "elementIds": []}
    assert "imageUrl" not in data["interactiveData"]


@pytest.mark.parametrize(
    "reply",
    [
        Form("f", "T", [TextInput("a", "A")]),
        Card("c", "T", buttons=[Button("b", "B")]),
        Scheduler("s", {"title": "Meet"}),
    ],
    ids=["form", "card", "scheduler"],
)
def test_replies_that_report_back_need_an_api_action(reply):
    with pytest.raises(ValueError, match="api_action"):
        reply.data(NO_ACTIONS)


def test_build_requests_sends_an_interactive_form_and_remembers_it(stub):
    msg = make_message("hi", sender="alice", bot="bot")
    [request] = build_requests(msg, [demo_form(tags=["booking"])], bot_uid="bot", api_action=stub)
    body = request.body
    assert request.path == "/bots/bot/messages"
    assert (body["category"], body["type"]) == ("interactive", "form")
    assert (body["receiver"], body["receiverType"]) == ("alice", "user")
    assert body["tags"] == ["booking"]
    assert body["muid"]
    assert body["data"]["interactiveData"]["submitElement"]["action"] == action("demo", "submit")
    assert request.remember is True
    assert stub.calls == [("demo", "submit")]
    assert stub.muids == [body["muid"]]  # the action is bound to this very reply
    assert stub.threads == [None]  # ... which goes to the main conversation


def test_in_thread_and_metadata_work_as_for_text(stub):
    msg = make_message("hi", id="500")
    form = demo_form(in_thread=True, metadata={"k": 1})
    [request] = build_requests(msg, [form], bot_uid="bot", api_action=stub)
    assert request.path == "/messages/500/thread"
    assert request.body["data"]["metadata"]["k"] == 1
    assert stub.threads == ["500"]  # the actions know the thread: answers to the submission go there too


@pytest.mark.parametrize(
    "options",
    [
        [("de", "Germany"), ("fr", "France")],
        {"de": "Germany", "fr": "France"},
        [{"value": "de", "label": "Germany"}, ["fr", "France"]],
    ],
    ids=["pairs", "dict", "dicts-and-lists"],
)
def test_options_are_normalised(ctx, options):
    element = Dropdown("country", "Country", options).to_json("f", ctx)
    assert element["options"] == [{"value": "de", "label": "Germany"}, {"value": "fr", "label": "France"}]
    assert "defaultValue" not in element


def test_plain_string_options_are_their_own_label(ctx):
    element = SingleSelect("time", "Time", ["19:00", "20:00"]).to_json("f", ctx)
    assert element["options"] == [{"value": "19:00", "label": "19:00"}, {"value": "20:00", "label": "20:00"}]


def test_replies_are_immutable_and_do_not_share_the_callers_lists(ctx):
    fields = [TextInput("a", "A")]
    form = Form("f", "T", fields)
    fields.append(TextInput("b", "B"))
    assert [f["elementId"] for f in form.data(ctx)["interactiveData"]["formFields"]] == ["a"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        form.title = "other"  # type: ignore[misc]


# ------------------------------------------------------------------ interaction goals


def test_a_custom_goal_is_sent_as_given(ctx):
    form = Form(
        "approval",
        "Approve?",
        [Button("approve", "Approve"), Button("reject", "Reject")],
        interaction_goal=interaction_goal("oneOf", ["approve", "reject"]),
    )
    assert form.data(ctx)["interactionGoal"] == {"type": "oneOf", "elementIds": ["approve", "reject"]}


def test_a_goal_may_be_given_as_cometchat_json(ctx):
    card = Card(
        "c",
        "T",
        buttons=[Button("a", "A"), Button("b", "B")],
        interaction_goal={"type": "allOf", "elementIds": ["a", "b"]},
    )
    assert card.interaction_goal == InteractionGoal("allOf", ("a", "b"))
    assert card.data(ctx)["interactionGoal"] == {"type": "allOf", "elementIds": ["a", "b"]}


@pytest.mark.parametrize(
    ("type_", "ids", "json"),
    [
        ("anyOf", ["a"], {"type": "anyOf", "elementIds": ["a"]}),
        ("allOf", ("a", "b"), {"type": "allOf", "elementIds": ["a", "b"]}),
        ("oneOf", ["a", "b"], {"type": "oneOf", "elementIds": ["a", "b"]}),
        ("none", [], {"type": "none", "elementIds": []}),
        ("anyAction", (), {"type": "anyAction", "elementIds": []}),
    ],
)
def test_interaction_goal_json(type_, ids, json):
    assert interaction_goal(type_, ids).to_json() == json


@pytest.mark.parametrize(
    ("type_", "ids", "error"),
    [
        ("someOf", ["a"], "must be one of"),
        ("anyOf", [], "at least one element id"),
        ("allOf", (), "at least one element id"),
        ("none", ["a"], "takes no element ids"),
        ("anyAction", ["a"], "takes no element ids"),
        ("anyOf", "submit", "not a str"),
        ("anyOf", ["a", "a"], "twice"),
        ("anyOf", [""], "element id"),
    ],
)
def test_invalid_interaction_goals(type_, ids, error):
    with pytest.raises(ValueError, match=error):
        interaction_goal(type_, ids)


# ------------------------------------------------------------------ scheduler and customInteractive


AVAILABILITY = {"monday": [{"from": "0900", "to": "1700"}]}


def test_scheduler_without_schedule_element_gets_one_reporting_back(ctx, stub):
    raw = {"title": "Meet Dr. Jacob", "duration": 30, "bufferTime": 15, "availability": AVAILABILITY}
    data = Scheduler("meet", raw).data(ctx)
    assert data == {
        "interactiveData": {
            **raw,
            "scheduleElement": {"elementType": "button", "elementId": "schedule", "buttonText": "Schedule",
                                "disableAfterInteracted": True, "action": action("meet", "schedule")},
        },
        "interactionGoal": {"type": "anyOf", "elementIds": ["schedule"]},
        "allowSenderInteraction": False,
    }  # fmt: skip
    assert "scheduleElement" not in raw  # the caller's data is left alone
    assert stub.calls == [("meet", "schedule")]


@pytest.mark.parametrize(
    "given_action",
    [None, {"actionType": "apiAction", "method": "POST"}, {"actionType": "apiAction", "url": ""}],
    ids=["no-action", "api-action-without-url", "empty-url"],
)
def test_scheduler_fills_a_missing_action_under_its_element_id(ctx, stub, given_action):
    element = {"elementType": "button", "elementId": "book", "buttonText": "Book", "disableAfterInteracted": True}
    if given_action is not None:
        element["action"] = given_action
    data = Scheduler("meet", {"title": "Meet", "scheduleElement": element}).data(ctx)
    assert data["interactiveData"]["scheduleElement"] == {**element, "action": action("meet", "book")}
    assert data["interactionGoal"] == {"type": "anyOf", "elementIds": ["book"]}
    assert stub.calls == [("meet", "book")]


@pytest.mark.parametrize(
    "own_action",
    [
        {"actionType": "apiAction", "url": "https://elsewhere.example.org/hook", "method": "POST"},
        {"actionType": "urlNavigation", "url": "https://calendly.example.org/x"},
    ],
    ids=["api-action-with-url", "url-navigation"],
)
def test_scheduler_keeps_an_action_of_its_own(stub, own_action):
    element = {"elementType": "button", "elementId": "book", "buttonText": "Book", "action": own_action}
    data = Scheduler("meet", {"title": "Meet", "scheduleElement": element}).data(NO_ACTIONS)
    assert data["interactiveData"]["scheduleElement"]["action"] == own_action
    assert stub.calls == []


def test_custom_interactive_passes_its_data_through(ctx, stub):
    raw = {"text": "Rate us", "stars": 5}
    reply = CustomInteractive("rating", raw, interaction_goal=interaction_goal("anyAction"))
    assert reply.data(ctx) == {
        "interactiveData": raw,
        "interactionGoal": {"type": "anyAction", "elementIds": []},
        "allowSenderInteraction": False,
    }
    assert CustomInteractive("rating", raw).data(ctx)["interactionGoal"] == {"type": "none", "elementIds": []}
    assert stub.calls == []


# ------------------------------------------------------------------ validation


def field() -> TextInput:
    return TextInput("a", "A")


@pytest.mark.parametrize(
    ("build", "error"),
    [
        # interaction ids
        (lambda: Form("", "T", [field()]), "interaction id"),
        (lambda: Form("x" * 65, "T", [field()]), "interaction id"),
        (lambda: Form("has space", "T", [field()]), "interaction id"),
        (lambda: Form("slash/id", "T", [field()]), "interaction id"),
        (lambda: Form("nl\n", "T", [field()]), "interaction id"),
        (lambda: Card(42, "T"), "interaction id"),  # type: ignore[arg-type]
        (lambda: Scheduler("é", {}), "interaction id"),
        (lambda: CustomInteractive("", {"a": 1}), "interaction id"),
        # element ids
        (lambda: TextInput("", "A"), "element id"),
        (lambda: TextInput("  ", "A"), "element id"),
        (lambda: Label(None, "x"), "element id"),  # type: ignore[arg-type]
        (lambda: Form("f", "T", [TextInput("a", "A"), Label("a", "x")]), "unique"),
        (lambda: Form("f", "T", [TextInput("submit", "A")]), "unique"),
        (lambda: Form("f", "T", [field()], submit=SubmitButton(id="a")), "unique"),
        (lambda: Card("c", "T", buttons=[Button("b", "B"), UrlButton("b", "B", "https://x.org")]), "unique"),
        # options and defaults
        (lambda: Dropdown("d", "D", []), "at least one option"),
        (lambda: Dropdown("d", "D", {}), "at least one option"),
        (lambda: Dropdown("d", "D", "abc"), "list or a dict"),
        (lambda: Dropdown("d", "D", ["a", "a"]), "unique"),
        (lambda: Dropdown("d", "D", [("a", "A"), ("a", "B")]), "unique"),
        (lambda: Dropdown("d", "D", [("a", "")]), "value and label"),
        (lambda: Dropdown("d", "D", [("", "A")]), "value and label"),
        (lambda: Dropdown("d", "D", [{"value": "a"}]), "value and label"),
        (lambda: Dropdown("d", "D", [(1, "One")]), "value and label"),
        (lambda: Dropdown("d", "D", [("a", "A", "extra")]), "an option must be"),
        (lambda: Dropdown("d", "D", ["a"], default="b"), "not one of its option values"),
        (lambda: SingleSelect("s", "S", ["a"], default="b"), "not one of its option values"),
        (lambda: Checkbox("c", "C", ["a", "b"], default=["a", "c"]), "not among its option values"),
        (lambda: Checkbox("c", "C", ["a", "b"], default="a"), "list of option values"),
        (lambda: Dropdown("d", "", ["a"]), "label"),
        # text inputs
        (lambda: TextInput("t", "T", max_lines=0), "max_lines"),
        (lambda: TextInput("t", "T", max_lines=2.5), "max_lines"),  # type: ignore[arg-type]
        (lambda: TextInput("t", ""), "label"),
        (lambda: TextInput("t", "T", placeholder=None), "placeholder"),  # type: ignore[arg-type]
        # buttons
        (lambda: Button("b", ""), "text"),
        (lambda: Button("b", "   "), "text"),
        (lambda: SubmitButton(""), "submit button text"),
        (lambda: Form("f", "T", [field()], submit=""), "submit button text"),
        (lambda: UrlButton("u", "Open", "ftp://x.org/f"), "http"),
        (lambda: UrlButton("u", "Open", "javascript:alert(1)"), "http"),
        (lambda: UrlButton("u", "Open", "example.org"), "http"),
        (lambda: UrlButton("u", "", "https://x.org"), "text"),
        (lambda: Label("l", ""), "text"),
        # forms and cards
        (lambda: Form("f", "T", []), "at least one field"),
        (lambda: Form("f", None, [field()]), "title"),  # type: ignore[arg-type]
        (lambda: Card("c", ""), "text"),
        (lambda: Card("c", "T", image_url="file:///etc/passwd"), "image_url"),
        (lambda: Form("f", "T", [field()], interaction_goal=interaction_goal("anyOf", ["nope"])), "unknown element"),
        (
            lambda: Card("c", "T", buttons=[Button("b", "B")], interaction_goal={"type": "anyOf", "elementIds": ["x"]}),
            "unknown element",
        ),
        (lambda: Card("c", "T", interaction_goal={"type": "bogus"}), "must be one of"),
        (lambda: Scheduler("s", {}, interaction_goal=interaction_goal("anyOf", ["other"])), "unknown element"),
        (lambda: Scheduler("s", {"scheduleElement": "button"}), "scheduleElement"),
        (lambda: Scheduler("s", {"scheduleElement": {"elementId": ""}}), "element id"),
        (lambda: Scheduler("s", {"scheduleElement": {"action": "x"}}), "action"),
        (lambda: CustomInteractive("c", {}), "empty"),
        (lambda: Form("f", "T", [field()], allow_sender_interaction="yes"), "allow_sender_interaction"),
        # tags (PLATFORM.md 4.2)
        (lambda: Form("f", "T", [field()], tags=[str(i) for i in range(26)]), "tags"),
        (lambda: Card("c", "T", tags=["x" * 101]), "tags"),
    ],
)
def test_invalid_replies_are_rejected_at_construction(build, error):
    with pytest.raises(ValueError, match=error):
        build()


@pytest.mark.parametrize(
    "build",
    [
        lambda: Form("f", "T", [SubmitButton()]),
        lambda: Form("f", "T", [{"elementType": "textInput"}]),
        lambda: Form("f", "T", field()),
        lambda: Form("f", "T", [field()], submit=Button("go", "Go")),
        lambda: Card("c", "T", buttons=[field()]),
        lambda: Card("c", "T", interaction_goal="anyOf"),
        lambda: Scheduler("s", ["title"]),
        lambda: CustomInteractive("c", "text"),
    ],
    ids=["submit-as-field", "raw-dict-field", "single-field", "button-as-submit", "input-on-card", "goal-as-str",
         "scheduler-list", "custom-str"],
)  # fmt: skip
def test_wrong_kinds_of_things_are_type_errors(build):
    with pytest.raises(TypeError):
        build()


def test_valid_edge_values_are_accepted(ctx, stub):
    long_id = "a" * 64
    form = Form(long_id, "", [TextInput("t", "T", max_lines=1)], tags=["x" * 100] * 25)
    assert form.data(ctx)["interactiveData"]["title"] == ""
    checkbox = Form("ns:booking.v2-1_x", "T", [Checkbox("c", "C", ["a"])]).data(ctx)
    assert "defaultValue" not in checkbox["interactiveData"]["formFields"][0]  # no default, no defaultValue
    bare = Card("c", "T").data(NO_ACTIONS)  # a card without buttons: nothing to report back
    assert bare["interactiveData"]["cardActions"] == [] and bare["interactionGoal"]["type"] == "none"
    assert stub.calls == [(long_id, "submit"), ("ns:booking.v2-1_x", "submit")]


@pytest.mark.parametrize(
    "build",
    [
        lambda: Form("f", "T", [TextInput("t", "x" * MAX_DATA_BYTES)]),
        lambda: Form("f", "T", [Dropdown("d", "D", [str(i) for i in range(1000)])]),
        lambda: Card("c", "x" * (MAX_DATA_BYTES - 100), buttons=[Button("b", "B")]),
        lambda: Card("c", "T", metadata={"blob": "x" * MAX_DATA_BYTES}),  # metadata counts towards data
        lambda: Scheduler("s", {"title": "é" * (MAX_DATA_BYTES // 2)}),  # bytes, not characters
        lambda: CustomInteractive("c", {"blob": "x" * MAX_DATA_BYTES}),
    ],
    ids=["long-label", "many-options", "long-card", "metadata", "multibyte", "custom"],
)
def test_data_over_the_10_kb_limit_is_rejected_before_sending(ctx, build):
    reply = build()
    with pytest.raises(ValueError, match="10 KB"):
        reply.data(ctx)
    with pytest.raises(ValueError, match="10 KB"):
        build_requests(make_message("hi"), [reply], bot_uid="bot", api_action=ctx.api_action)


def test_the_limit_is_exactly_10_kb_of_compact_json(ctx):
    def card(text: str) -> Card:
        return Card("c", text, buttons=[Button("b", "B")])

    size = len(json.dumps(card("x").data(ctx), ensure_ascii=False, separators=(",", ":")).encode()) - 1
    room = MAX_DATA_BYTES - size  # bytes left for the text
    assert card("x" * room).data(ctx)["interactiveData"]["text"] == "x" * room
    assert card("é" * (room // 2)).data(ctx)  # two bytes each in UTF-8
    with pytest.raises(ValueError, match="10 KB"):
        card("x" * (room + 1)).data(ctx)
    with pytest.raises(ValueError, match="10 KB"):
        card("é" * (room // 2 + 1)).data(ctx)


def test_what_body_sends_never_exceeds_the_limit(ctx):
    """Reply.body() may add to ``data`` (metadata, the framework's marker); the final data is checked too."""

    def card(text: str) -> Card:
        return Card("c", text, buttons=[Button("b", "B")], metadata={"k": "v"})

    size = len(json.dumps(card("x").body(ctx)["data"], ensure_ascii=False, separators=(",", ":")).encode()) - 1
    room = MAX_DATA_BYTES - size
    assert len(json.dumps(card("x" * room).body(ctx)["data"], separators=(",", ":"))) == MAX_DATA_BYTES
    with pytest.raises(ValueError, match="10 KB"):
        card("x" * (room + 1)).body(ctx)
