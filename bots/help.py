"""Greetings, /help, and the fallback for text nothing else understood."""

from bot import Router

bot = Router()

HELP = """I can:
• /weather <city> [tomorrow] (or just ask "what is the weather in Paris?")
• react to images, files, audio and video you send me
• tell you where you are when you share a location
• answer in groups when you mention me"""


@bot.on_command("help", "start")
def help_(msg):
    return HELP


@bot.on_text(r"^(hi|hello|hey)\b")
def hello(msg):
    return f"Hello {msg.sender.name}! Type /help to see what I can do."


@bot.on_text(r"\bhelp\b")
def asks_for_help(msg):
    return [f"Sure, {msg.sender.name}, here is what I can do.", HELP]


@bot.fallback
def not_understood(msg):
    # In a group the bot sees chatter not meant for it: only answer when mentioned.
    if msg.is_group and not msg.bot_mentioned:
        return None
    return f"Sorry, I don't know how to answer “{msg.text}” yet. Type /help to see what I can do."
