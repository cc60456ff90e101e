"""``flask --app app bot ...``: commands to run, inspect and register a bot (click, as Flask's own CLI).

``register``, ``unregister``, ``status`` and ``check`` talk to CometChat's bots API with the app's settings.
CometChat answers bot settings with the callback password in clear text: these commands compare it with
``CALLBACK_PASSWORD`` but never print it.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from redis import RedisError

from . import health
from .api import GROUP_CHAT_SETTINGS
from .client import CometChatClient
from .errors import CometChatError, TransportError
from .settings import Settings, parse_address

if TYPE_CHECKING:
    from .testing import BotTestClient

log = logging.getLogger(__name__)

bot_cli = AppGroup("bot", help="Run and inspect the CometChat bot.")


def _state():
    from .factory import bot_app

    return bot_app(current_app)


@bot_cli.command("routes")
def routes() -> None:
    """The handlers in match order, with their filters."""
    root = _state().router
    limits = dict(root.limits())
    for n, (router, route, fallback) in enumerate(root.iter_routes(), 1):
        kind = "fallback" if fallback else "route"
        click.echo(f"{n:3}  {kind:8}  {route.filter.describe():45}  {route.name}  [{limits[router]}]")


@bot_cli.command("say")
@click.argument("text")
@click.option("--as", "sender", default="alice", show_default=True, help="The uid of the user who sends it.")
@click.option("--group", default=None, help="Send it to this group (guid) instead of 1:1 to the bot.")
def say(text: str, sender: str, group: str | None) -> None:
    """Run one message through the handlers and print the replies (nothing is sent to CometChat)."""
    from .testing import make_callback

    state = _state()
    bot_uid = state.settings.bot_uid or "bot"
    with _offline_client(state) as client:
        replies = client.send_payload(make_callback(text, sender=sender, group=group, bot=bot_uid))
    _print_replies(replies)


@contextlib.contextmanager
def _offline_client(state: Any) -> Iterator[BotTestClient]:
    """A test client over the app's handlers and settings (state TTL, loop guard, public URL, ...) for a run
    that sends nothing and stays apart: no Redis, no playground, and a journal of its own in a temporary folder
    that is removed afterwards (a ``say`` run after run leaves nothing in /tmp)."""
    from .testing import BotTestClient

    with tempfile.TemporaryDirectory(prefix="bot-cli-") as folder:
        settings = state.settings.replace(
            journal_path=os.path.join(folder, "journal.sqlite3"), redis_url="", playground="off"
        )
        with BotTestClient.for_routers(state.router, settings=settings) as client:
            yield client


@bot_cli.command("worker")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="Messages handled at once (default: WORKER_THREADS)."
)
@click.option("--name", default=None, help="RQ worker name (threads get -1, -2, ...); default: random.")
@click.option("--metrics", "metrics_at", default=None, help="HOST:PORT to serve /metrics on (default: WORKER_METRICS).")
def worker(burst: bool, threads: int | None, name: str | None, metrics_at: str | None) -> None:
    """Run an RQ worker process (Redis mode, REDIS_URL set): handles messages and sends replies."""
    from .redis_queue import RedisDelivery, WorkerFailed

    state = _state()
    delivery = state.delivery
    if not isinstance(delivery, RedisDelivery):
        raise click.UsageError("set REDIS_URL to use RQ workers; without it each web process handles its messages")
    metrics_at = metrics_at if metrics_at is not None else state.settings.worker_metrics
    if metrics_at:
        address = parse_address(metrics_at)
        if address is None:
            raise click.BadParameter(f"expected HOST:PORT, got {metrics_at!r}", param_hint="--metrics")
        try:
            host, port = health.serve(delivery, state.metrics, *address)
        except OSError as exc:
            raise click.ClickException(f"cannot serve metrics on {metrics_at}: {exc}") from exc
        log.info("worker metrics at http://%s:%d/metrics", host, port)
    try:
        delivery.work(burst=burst, name=name, threads=threads or state.settings.worker_threads)
    except WorkerFailed as exc:
        raise click.ClickException(str(exc)) from exc  # exit status 1: the process supervisor restarts it
    except RedisError as exc:  # at start (RQ registers each worker); later, RQ's loop waits for Redis to return
        raise click.ClickException(f"Redis cannot be reached (REDIS_URL): {exc}") from exc


@bot_cli.group("dead-letters", invoke_without_command=True)
@click.option("--limit", default=20, show_default=True)
@click.pass_context
@with_appcontext
def dead_letters(ctx: click.Context, limit: int) -> None:
    """Replies that finally failed (newest first); `retry ID` sends one again."""
    if ctx.invoked_subcommand is not None:
        return
    letters = _state().delivery.dead_letters(limit)
    if not letters:
        click.echo("no dead letters")
    for letter in letters:
        body = letter["body"] if isinstance(letter["body"], dict) else json.loads(letter["body"])
        shown = body.get("data", {}).get("text") if isinstance(body, dict) else None
        click.echo(
            f"{letter.get('id', '-')}\t{letter['error_code']}\tmessage {letter['message_id']} "
            f"in {letter['conversation']}\tattempts {letter['attempts']}\t{(shown or '')[:60]}"
        )


@dead_letters.command("retry")
@click.argument("letter_id")
def retry_dead_letter(letter_id: str) -> None:
    """Send a dead reply again, after fixing its cause (the journal's outbox, or an RQ job in Redis mode)."""
    if not _state().delivery.requeue_dead_letter(letter_id):
        raise click.ClickException(f"no dead reply with id {letter_id}")
    click.echo(f"dead letter {letter_id} queued again")


# ------------------------------------------------------------------ the bot in CometChat (PLATFORM.md 1)

LOCAL_MODE = "local mode: set COMETCHAT_APP_ID, COMETCHAT_REGION, COMETCHAT_API_KEY and COMETCHAT_BOT_UID"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
MAX_FIELD_LENGTH = 50  # CometChat's limit on a bot's uid, username and password
MAX_URL_LENGTH = 255  # and on its webhookURL


def _live_settings() -> Settings:
    """The app's settings, or a clear error in local mode (no CometChat to talk to)."""
    settings = _state().settings
    if not settings.is_live:
        raise click.ClickException(f"{LOCAL_MODE} (this command talks to CometChat)")
    return settings


@contextlib.contextmanager
def _cometchat(settings: Settings) -> Iterator[CometChatClient]:
    """A client for the app's CometChat; a failed call becomes one line of explanation, not a traceback."""
    client = CometChatClient.from_settings(settings)
    try:
        yield client
    except CometChatError as error:
        raise click.ClickException(_explain(error, settings)) from None
    finally:
        client.close()


def _register_hint(settings: Settings, url: str = "") -> str:
    return f"run `flask --app app bot register --url {url or 'https://<your-host>' + settings.callback_path}`"


def _hint(error: CometChatError, settings: Settings) -> str:
    """What to do about a failed call, for the errors a misconfigured bot meets."""
    uid = settings.bot_uid
    if error.code == "ERR_UID_NOT_FOUND":
        return (
            f"CometChat has no user {uid!r}, and a bot is an existing user plus a webhook: create the user first "
            "(Dashboard → Users, or POST /v3/users with uid and name), then run this again"
        )
    if error.code == "ERR_BOT_NOT_FOUND":
        return f"{uid!r} is not a bot of this app: {_register_hint(settings)}"
    if error.code == "AUTH_ERR_NO_ACCESS":
        return "this REST API key has no full access: use a full-access key in COMETCHAT_API_KEY"
    if error.status == 401 or error.code.startswith("AUTH_ERR"):
        return "the REST API key is wrong: check COMETCHAT_API_KEY (and that COMETCHAT_APP_ID is its app)"
    if isinstance(error, TransportError):
        return (
            f"CometChat did not answer at {settings.base_url}: check COMETCHAT_APP_ID and COMETCHAT_REGION "
            "(or COMETCHAT_API_URL) and the network"
        )
    return ""


def _explain(error: CometChatError, settings: Settings) -> str:
    hint = _hint(error, settings)
    return f"CometChat: {error}" + (f" -> {hint}" if hint else "")


def _check_webhook_url(url: str, callback_path: str) -> list[str]:
    """Refuse a URL CometChat cannot call; return warnings about one that probably misses the callback."""
    parts = urlsplit(url)
    local_http = parts.scheme == "http" and parts.hostname in LOCAL_HOSTS
    if not (parts.scheme == "https" and parts.hostname) and not local_http:
        raise click.BadParameter(
            f"{url!r} is not an https:// URL (CometChat calls bots over HTTPS; http:// only for localhost)",
            param_hint="--url",
        )
    if len(url) > MAX_URL_LENGTH:
        raise click.BadParameter(f"CometChat takes at most {MAX_URL_LENGTH} characters", param_hint="--url")
    warnings = []
    if not parts.path.endswith(callback_path):
        warnings.append(
            f"the URL's path {parts.path or '/'!r} does not end with this app's CALLBACK_PATH {callback_path!r}; "
            "unless a proxy rewrites it, CometChat's callbacks will get 404"
        )
    if local_http:
        warnings.append("an http:// localhost URL only suits tests: CometChat itself cannot reach it")
    return warnings


def _compare(stored: Any, ours: str) -> str:
    """'matches' or 'differs' (or 'not set'): the stored secret itself is never shown."""
    if not stored:
        return "not set"
    return "matches" if ours and hmac.compare_digest(str(stored).encode(), ours.encode()) else "differs"


def _versus(verdict: str, name: str) -> str:
    return {"matches": f"matches {name}", "differs": f"differs from {name}"}.get(verdict, verdict)


@bot_cli.command("register")
@click.option(
    "--url", required=True, help="The public URL of the callback, e.g. https://bots.example.org/cometchat/callback."
)
@click.option(
    "--group-setting",
    type=click.Choice(GROUP_CHAT_SETTINGS),
    default="mentionedMessages",
    show_default=True,
    help="Which group messages CometChat relays to the bot (1:1 messages always are).",
)
@click.option("--disabled", is_flag=True, help="Register it disabled: CometChat relays nothing until it is enabled.")
def register(url: str, group_setting: str, disabled: bool) -> None:
    """Create the bot COMETCHAT_BOT_UID in CometChat, or update it: webhook, Basic auth, group setting, enabled."""
    settings = _live_settings()
    uid = settings.bot_uid
    if not settings.callback_auth_enabled:
        raise click.ClickException(
            "set CALLBACK_USERNAME and CALLBACK_PASSWORD first: CometChat sends them as Basic auth with every "
            "callback, and the app checks them"
        )
    for name, value in (
        ("COMETCHAT_BOT_UID", uid),
        ("CALLBACK_USERNAME", settings.callback_username),
        ("CALLBACK_PASSWORD", settings.callback_password),
    ):
        if len(value) > MAX_FIELD_LENGTH:
            raise click.ClickException(f"{name} has {len(value)} characters; CometChat takes at most 50")
    for warning in _check_webhook_url(url, settings.callback_path):
        click.echo(f"warning: {warning}", err=True)
    fields = {
        "webhook_url": url,
        "group_chat_setting": group_setting,
        "username": settings.callback_username,
        "password": settings.callback_password,
        "enabled": not disabled,  # CometChat's default is false: a bot created without it relays nothing
    }
    with _cometchat(settings) as client:
        try:
            client.create_bot(uid, **fields)
            done = "created"
        except CometChatError as error:
            if error.code != "ERR_BOT_ALREADY_EXISTS":
                raise
            client.update_bot(uid, **fields)
            done = "updated"
    click.echo(
        f"{done} bot {uid}: webhook {url}, group messages: {group_setting}, "
        f"Basic auth as {settings.callback_username!r} (CALLBACK_PASSWORD), {'disabled' if disabled else 'enabled'}"
    )
    if disabled:
        click.echo("the bot is disabled: CometChat relays nothing to it until you register it without --disabled")
    if group_setting != "none":
        click.echo("add the bot's user to the groups it should answer in (it has to be a member there)")


@bot_cli.command("unregister")
@click.option("--disable-only", is_flag=True, help="Keep the bot but set enabled: false (it then receives nothing).")
def unregister(disable_only: bool) -> None:
    """Delete the bot COMETCHAT_BOT_UID in CometChat (its user remains), or only disable it."""
    settings = _live_settings()
    with _cometchat(settings) as client:
        if disable_only:
            client.update_bot(settings.bot_uid, enabled=False)
        else:
            client.delete_bot(settings.bot_uid)
    if disable_only:
        click.echo(f"disabled bot {settings.bot_uid}: CometChat relays nothing to it until `register` enables it")
    else:
        click.echo(f"deleted bot {settings.bot_uid} (its user remains)")


@bot_cli.command("status")
def status() -> None:
    """The bot's settings in CometChat, and whether its Basic auth matches the app's (the password is not shown)."""
    settings = _live_settings()
    with _cometchat(settings) as client:
        found = client.get_bot(settings.bot_uid)
    # CometChat leaves out every property that is false or empty.
    rows = [
        ("uid", found.get("uid", settings.bot_uid)),
        ("webhook URL", found.get("webhookURL") or "(none)"),
        ("group setting", found.get("groupChatSetting") or "none"),
        ("enabled", "yes" if found.get("enabled") else "no"),
        ("basic auth", "on" if found.get("useBasicAuth") else "off"),
        ("username", _versus(_compare(found.get("username"), settings.callback_username), "CALLBACK_USERNAME")),
        ("password", _versus(_compare(found.get("password"), settings.callback_password), "CALLBACK_PASSWORD")),
    ]
    for name, value in rows:
        click.echo(f"{name:14} {value}")


class _Checks:
    """The lines of `check`: one per check, ok / FAIL / skip, with a hint on failures."""

    def __init__(self) -> None:
        self.failed = False

    def report(self, name: str, ok: bool | None, detail: str, hint: str = "") -> None:
        mark = "skip" if ok is None else ("ok" if ok else "FAIL")
        self.failed |= ok is False
        click.echo(f"{mark:4}  {name:8}  {detail}" + (f" -> {hint}" if hint and ok is False else ""))


@bot_cli.command("check")
@click.pass_context
def check(ctx: click.Context) -> None:
    """Check credentials and reachability: settings, API key, the bot in CometChat, its user. Exit 1 on a failure."""
    settings = _state().settings
    checks = _Checks()
    if not settings.is_live:
        checks.report("settings", False, "no CometChat credentials", LOCAL_MODE)
        ctx.exit(1)
    if settings.callback_auth_enabled:
        checks.report("settings", True, f"live mode, bot {settings.bot_uid}, callback Basic auth set")
    else:
        checks.report(
            "settings",
            False,
            "the callback takes unauthenticated requests",
            "set CALLBACK_USERNAME and CALLBACK_PASSWORD",
        )
    uid = settings.bot_uid
    client = CometChatClient.from_settings(settings)
    try:
        found: dict[str, Any] | None = None
        try:
            found = client.get_bot(uid)
            checks.report("api", True, f"{settings.base_url} accepts the REST API key")
        except CometChatError as error:
            if error.code == "ERR_BOT_NOT_FOUND":  # an answer about the bot: the key was accepted
                checks.report("api", True, f"{settings.base_url} accepts the REST API key")
                checks.report("bot", False, f"{uid!r} is not a bot of this app", _register_hint(settings))
            else:
                checks.report("api", False, str(error), _hint(error, settings))
                checks.report("bot", None, "not checked: the API did not answer")
                checks.report("user", None, "not checked: the API did not answer")
                ctx.exit(1)
        if found is not None:
            _check_bot(checks, found, settings)
        try:
            user = client.get_user(uid)
            checks.report("user", True, f"user {uid} exists ({user.get('name') or 'no name'})")
        except CometChatError as error:
            checks.report("user", False, str(error), _hint(error, settings))
    finally:
        client.close()
    ctx.exit(1 if checks.failed else 0)


def _check_bot(checks: _Checks, found: dict[str, Any], settings: Settings) -> None:
    webhook = found.get("webhookURL") or ""
    problems = []
    if not found.get("enabled"):
        problems.append("disabled")
    if not urlsplit(webhook).path.endswith(settings.callback_path):
        problems.append(f"webhook {webhook or '(none)'} does not end with {settings.callback_path}")
    if not found.get("useBasicAuth"):
        problems.append("Basic auth is off")
    elif settings.callback_auth_enabled:
        for name, stored, ours in (
            ("username", found.get("username"), settings.callback_username),
            ("password", found.get("password"), settings.callback_password),
        ):
            if _compare(stored, ours) != "matches":
                problems.append(f"Basic auth {name} differs from CALLBACK_{name.upper()}")
    group = found.get("groupChatSetting") or "none"
    if problems:
        url = webhook if webhook and urlsplit(webhook).path.endswith(settings.callback_path) else ""
        checks.report("bot", False, "; ".join(problems), _register_hint(settings, url))
    else:
        checks.report("bot", True, f"enabled, webhook {webhook}, group messages: {group}, Basic auth matches")


# ------------------------------------------------------------------ a terminal chat with the handlers

CHAT_HELP = ":as UID (sender), :group GUID, :dm (1:1 with the bot), :quit (or end of input)"


@bot_cli.command("chat")
@click.option("--as", "sender", default="alice", show_default=True, help="The uid of the user who writes.")
@click.option("--group", default=None, help="Write in this group (guid) instead of 1:1 to the bot.")
def chat(sender: str, group: str | None) -> None:
    """Chat with the handlers in the terminal: each line is a message, the replies are printed (nothing is sent).

    In a group, start a line with @bot to mention the bot.
    """
    from .testing import make_callback

    state = _state()
    bot_uid = state.settings.bot_uid or "bot"
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    click.echo(f"chatting with the handlers as {sender} ({CHAT_HELP})")
    # One client (one app, one journal) for the session: what a message leaves behind is there for the next.
    with _offline_client(state) as client:
        while True:
            where = f"in {group}" if group else "to the bot"
            try:
                line = input(f"{sender} {where}> " if interactive else "")
            except (EOFError, KeyboardInterrupt):
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith(":"):
                command, _, arg = line.partition(" ")
                arg = arg.strip()
                if command in (":quit", ":q", ":exit"):
                    break
                if command == ":as" and arg:
                    sender = arg
                elif command == ":group" and arg:
                    group = arg
                elif command == ":dm":
                    group = None
                else:
                    click.echo(f"unknown command {line!r}: {CHAT_HELP}")
                    continue
                click.echo(f"(now {sender} {'in group ' + group if group else 'to the bot'})")
                continue
            mentions: list[str] = []
            for token in ("@bot", f"@{bot_uid}"):
                if group and (line == token or line.startswith(token + " ")):
                    mentions, line = [bot_uid], line[len(token) :].strip()
                    break
            callback = make_callback(line or None, sender=sender, group=group, bot=bot_uid, mentions=mentions)
            try:
                _print_replies(client.send_payload(callback))
            except AssertionError as error:  # BotTestClient's "not a 200" / "did not finish": say so, go on
                click.echo(f"({error})", err=True)


def _print_replies(replies: list) -> None:
    if not replies:
        click.echo("(no reply)")
    for reply in replies:
        shown = reply.text if reply.text is not None else json.dumps(reply.body["data"], ensure_ascii=False)
        click.echo(f"[{reply.type} -> {reply.receiver_type} {reply.receiver}] {shown}")
