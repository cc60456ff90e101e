"""Reply ``"Echo: " + text`` to every text message, as the harness's contract asks (../shared/bench/servers.py)."""

from bot import Router

bot = Router()


@bot.fallback
def echo(msg):
    return f"Echo: {msg.raw_text}"
