"""``flask --app app bot ...``: commands to run and inspect a bot (click, as Flask's own CLI)."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

bot_cli = AppGroup("bot", help="Run and inspect the CometChat bot.")


def _state():
    from .factory import bot_app

    return bot_app(current_app)


@bot_cli.command("routes")
def routes() -> None:
    """The handlers in match order, with their filters."""
    for n, (router, route, fallback) in enumerate(_state().router.iter_routes(), 1):
        kind = "fallback" if fallback else "route"
        click.echo(f"{n:3}  {kind:8}  {route.filter.describe():45}  {route.name}  [{router.name}]")


@bot_cli.command("say")
@click.argument("text")
@click.option("--as", "sender", default="alice", show_default=True, help="The uid of the user who sends it.")
@click.option("--group", default=None, help="Send it to this group (guid) instead of 1:1 to the bot.")
def say(text: str, sender: str, group: str | None) -> None:
    """Run one message through the handlers and print the replies (nothing is sent to CometChat)."""
    from .testing import BotTestClient, make_callback

    state = _state()
    bot_uid = state.settings.bot_uid or "bot"
    with BotTestClient.for_routers(state.router) as client:
        replies = client.send_payload(make_callback(text, sender=sender, group=group, bot=bot_uid))
    if not replies:
        click.echo("(no reply)")
    for reply in replies:
        shown = reply.text if reply.text is not None else json.dumps(reply.body["data"], ensure_ascii=False)
        click.echo(f"[{reply.type} -> {reply.receiver_type} {reply.receiver}] {shown}")


@bot_cli.command("worker")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
def worker(burst: bool) -> None:
    """Run an RQ worker (Redis mode, REDIS_URL set): handles messages and sends replies."""
    from .redis_queue import RedisDelivery

    delivery = _state().delivery
    if not isinstance(delivery, RedisDelivery):
        raise click.UsageError("set REDIS_URL to use RQ workers; without it each web process handles its messages")
    delivery.work(burst=burst)


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
@click.argument("letter_id", type=int)
def retry_dead_letter(letter_id: int) -> None:
    """Put a dead reply back in the outbox (embedded mode), after fixing its cause."""
    from .pipeline import Pipeline

    delivery = _state().delivery
    if not isinstance(delivery, Pipeline):
        raise click.UsageError("retry works on the embedded journal; in Redis mode re-run the failed RQ job")
    if not delivery.journal.requeue_dead_letter(letter_id):
        raise click.ClickException(f"no dead reply with id {letter_id}")
    click.echo(f"dead letter {letter_id} queued again")
