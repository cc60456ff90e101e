"""The web playground (/playground) in a real browser: Debian's headless Chromium driven by Playwright.

One app (local mode, the example bots in ``bots/``) is served for the whole module by werkzeug on a free
port; every test gets a fresh browser context and leaves a screenshot in ``artifacts/``. The tests use
different users (or conversations) so that they do not depend on each other's order.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from werkzeug.serving import make_server

import config
from app import create_app
from bot.factory import bot_app
from bots.group import answer
from bots.weather import forecast

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
# Without these, Chromium on a machine without internet access is slow or flaky (it keeps trying to reach
# Google's services, QUIC, component updates).
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
TIMEOUT_MS = 10_000

expect.set_options(timeout=TIMEOUT_MS)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def clean_environment() -> Iterator[None]:
    """Replaces conftest's per-test fixture, which stops every pipeline after each test: here one app serves
    the whole module (``server`` cleans the environment and stops the app itself)."""
    yield


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app in local mode (playground on), served on 127.0.0.1 at a free port; yields its base URL."""
    with pytest.MonkeyPatch.context() as mp:
        for name in config.VARIABLES:  # whatever the shell exports: no CometChat credentials, no Redis
            mp.delenv(name, raising=False)
        app = create_app({"JOURNAL_PATH": str(tmp_path_factory.mktemp("playground") / "journal.sqlite3")})
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, name="playground-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_port}"
    finally:
        http.shutdown()
        http.server_close()
        thread.join(timeout=5)
        bot_app(app).close(timeout=2)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium package "
            "(run `make system-deps`, or `sudo apt-get install chromium`)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, server: str, request: pytest.FixtureRequest) -> Iterator[Page]:
    """The playground, open and connected (its long poll answered); a screenshot is saved afterwards."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=server)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page_errors: list[str] = []
    dialogs: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto("/playground")
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"playground-{request.node.name.removeprefix('test_')}.png"
        page.screenshot(path=str(shot), animations="disabled")  # CI keeps artifacts/
        context.close()
    assert not page_errors, f"JavaScript errors on the page: {page_errors}"
    assert not dialogs, f"the page opened dialogs: {dialogs}"


# ------------------------------------------------------------------ helpers


def be(page: Page, uid: str) -> None:
    page.get_by_test_id("user-picker").select_option(uid)
    expect(page.get_by_test_id("user-picker")).to_have_value(uid)


def open_conversation(page: Page, conversation_id: str) -> None:
    page.locator(f'[data-testid="conversation"][data-conversation-id="{conversation_id}"]').click()
    expect(page.locator(f'[data-conversation-id="{conversation_id}"]')).to_have_attribute("aria-current", "true")


def send(page: Page, text: str) -> None:
    box = page.get_by_test_id("composer-input")
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")


def message_list(page: Page) -> Locator:
    return page.get_by_test_id("message-list")


def by(scope: Locator, uid: str) -> Locator:
    """Messages sent by ``uid`` inside ``scope``."""
    return scope.locator(f'[data-testid="message"][data-sender="{uid}"]')


def png(width: int, height: int) -> bytes:
    """A small valid PNG (an indigo square), built without any imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((79, 70, 229)) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------ tests


def test_weather_command(page: Page) -> None:
    be(page, "alice")
    expect(page.get_by_test_id("chat-title")).to_have_text("Bot")
    send(page, "/weather Paris")

    mine = by(message_list(page), "alice").last
    expect(mine.get_by_test_id("message-text")).to_have_text("/weather Paris")
    expect(mine.get_by_test_id("message-sender")).to_have_text("Alice")
    expect(page.get_by_test_id("relay-status")).to_contain_text("Relayed to the bot")
    reply = by(message_list(page), "bot").last
    expect(reply.get_by_test_id("message-text")).to_have_text(forecast("Paris"))
    expect(reply.get_by_test_id("message-sender")).to_have_text("Bot")
    expect(reply).to_have_attribute("data-bot", "true")


def test_booking_form_and_another_user(page: Page) -> None:
    be(page, "bob")
    send(page, "/book")
    expect(by(message_list(page), "bot").last.get_by_test_id("message-text")).to_have_text(
        "Let's book a table. In which city? (/cancel stops at any time)"
    )
    send(page, "lyon")

    form = message_list(page).get_by_test_id("interactive-form").last
    expect(form.get_by_test_id("form-title")).to_have_text("Table in Lyon")
    expect(form.get_by_test_id("field-time")).to_have_value("20:00")  # the form's default
    form.get_by_test_id("field-name").fill("Bob Martin")
    form.get_by_test_id("field-time").select_option("19:30")
    form.get_by_test_id("field-party").get_by_label("3-4 people").check()
    submit = form.get_by_test_id("button-submit")
    submit.click()

    expect(by(message_list(page), "bot").last.get_by_test_id("message-text")).to_have_text(
        "Booked: a table for 3-4 people in Lyon at 19:30, under Bob Martin. See you!"
    )
    expect(submit).to_have_attribute("data-done", "true")
    expect(submit).to_be_disabled()
    expect(form.get_by_test_id("goal-completion")).to_have_text("✓ Booked!")
    expect(form.get_by_test_id("field-name")).to_be_disabled()

    # Carol looks at Bob's chat and tries to submit Bob's form: the bot refuses (403 wrong_submitter).
    be(page, "carol")
    open_conversation(page, "bob_user_bot")
    expect(page.get_by_test_id("readonly-banner")).to_contain_text("only Bob can write here")
    expect(page.get_by_test_id("composer-input")).to_be_disabled()
    expect(submit).to_be_enabled()  # done for Bob, not for Carol
    submit.click()
    error = form.get_by_test_id("interaction-error")
    expect(error).to_have_text("Please fill in: Name on the booking.")  # required fields are checked first
    form.get_by_test_id("field-name").fill("Carol")
    submit.click()
    expect(error).to_have_attribute("data-code", "wrong_submitter")
    expect(error).to_have_text("this form was sent to 'bob', not to 'carol' (wrong_submitter)")
    expect(submit).to_have_attribute("data-done", "false")


def test_group_mention_answered_in_thread(page: Page) -> None:
    be(page, "alice")
    open_conversation(page, "group_team")
    expect(page.get_by_test_id("chat-title")).to_have_text("# Team")
    expect(page.get_by_test_id("bot-member-toggle")).to_be_checked()

    # "@bo" opens the mention list; Enter picks the bot.
    box = page.get_by_test_id("composer-input")
    box.press_sequentially("@bo")
    expect(page.locator('[data-testid="mention-option"][data-uid="bot"]')).to_be_visible()
    box.press("Enter")
    question = "how do I reset my password?"
    box.press_sequentially(question)
    expect(box).to_have_value(f"@bot {question}")
    box.press("Enter")

    asked = by(message_list(page), "alice").filter(has_text=question).last
    expect(asked.get_by_test_id("mention")).to_have_text("@Bot")
    expect(asked.get_by_test_id("message-text")).to_have_text(f"@Bot {question}")
    thread_button = asked.get_by_test_id("thread-button")
    expect(thread_button).to_have_text("1 reply")
    expect(by(message_list(page), "bot")).to_have_count(0)  # the answer is in the thread, not in the group
    thread_button.click()

    panel = page.get_by_test_id("thread-panel")
    expect(panel.get_by_test_id("thread-parent")).to_contain_text(question)
    replies = panel.get_by_test_id("thread-list").get_by_test_id("message")
    expect(replies).to_have_count(1)
    expect(replies.last.get_by_test_id("message-text")).to_have_text(answer(question))

    follow_up = "and when do deploys go out?"  # no mention: the bot follows the thread it opened
    thread_box = panel.get_by_test_id("thread-composer-input")
    thread_box.fill(follow_up)
    thread_box.press("Enter")
    expect(replies).to_have_count(3)
    expect(replies.nth(1).get_by_test_id("message-text")).to_have_text(follow_up)
    expect(replies.last).to_have_attribute("data-bot", "true")
    expect(replies.last.get_by_test_id("message-text")).to_have_text(answer(follow_up))
    expect(thread_button).to_have_text("3 replies")
    expect(by(message_list(page), "bot")).to_have_count(0)


def test_image_upload(page: Page) -> None:
    be(page, "carol")
    picture = {"name": "dot.png", "mimeType": "image/png", "buffer": png(96, 64)}
    page.get_by_test_id("file-input").set_input_files(picture)  # what the File button opens

    sent = message_list(page).locator('[data-testid="message"][data-sender="carol"][data-type="image"]').last
    expect(sent.get_by_test_id("message-image")).to_have_js_property("naturalWidth", 96)
    expect(sent.get_by_test_id("message-caption")).to_contain_text("dot.png")
    thanks = by(message_list(page), "bot").filter(has_text="Nice picture").last
    expect(thanks.get_by_test_id("message-text")).to_have_text("Nice picture, Carol!")
    echoed = message_list(page).locator('[data-testid="message"][data-bot="true"][data-type="image"]').last
    image = echoed.get_by_test_id("message-image")
    expect(image).to_be_visible()
    expect(image).to_have_attribute("src", sent.get_by_test_id("message-image").get_attribute("src") or "?")
    expect(image).to_have_js_property("naturalWidth", 96)  # loaded, not a broken image


def test_html_in_messages_is_text(page: Page) -> None:
    # A new user (added in the page) whose name is HTML too.
    page.get_by_test_id("add-user-toggle").click()
    page.get_by_test_id("new-user-uid").fill("mallory")
    page.get_by_test_id("new-user-name").fill("<b>Mallory</b>")
    page.get_by_test_id("add-user-button").click()
    expect(page.get_by_test_id("user-picker")).to_have_value("mallory")

    payload = "<img src=x onerror=alert(1)>"
    send(page, payload)
    mine = by(message_list(page), "mallory").last
    expect(mine.get_by_test_id("message-text")).to_have_text(payload)
    expect(mine.get_by_test_id("message-sender")).to_have_text("<b>Mallory</b>")
    reply = by(message_list(page), "bot").last
    expect(reply.get_by_test_id("message-text")).to_have_text(
        f"Sorry, I don't know how to answer “{payload}” yet. Type /help to see what I can do."
    )
    expect(message_list(page).locator("img")).to_have_count(0)
    expect(message_list(page).locator("b")).to_have_count(0)
