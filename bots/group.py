"""Group chats: answer when mentioned, keep answering in the thread it opened, welcome new members.

Shows a router's ``group_policy`` (the mention router answers group messages only when the bot is
mentioned, like CometChat's ``mentionedMessages``), a router with a filter of its own (the thread router
takes only replies in threads the bot opened), replies in threads (``in_thread=True``), and state.
"""

from bot import Router, Text

bot = Router()
mentions = Router("group.mentions", group_policy="mentioned")


def in_bot_thread(msg):
    """Thread replies under a message the bot answered in a thread (remembered in the conversation state)."""
    return msg.is_group and msg.parent_id is not None and msg.parent_id in msg.state.get("threads", [])


threads = Router("group.threads", filters=[in_bot_thread])

FAQ = {
    ("deploy", "release"): "Deploys go out from main every weekday at 14:00 UTC; /deploy-status shows the last one.",
    (
        "password",
        "login",
    ): "Reset your password at Settings → Security; SSO users reset it with their identity provider.",
    ("vacation", "holiday", "leave"): "Ask your manager first, then file it in the HR portal under Time off.",
}


def answer(question: str) -> str | None:
    words = question.lower()
    for keys, text in FAQ.items():
        if any(key in words for key in keys):
            return text
    return None


@mentions.on_message(lambda msg: msg.is_group and msg.type == "text" and not msg.text)
def bare_mention(msg):
    return f"Yes, {msg.sender.name}? Ask me about the weather (/weather Paris) or type /help."


@mentions.on_message(lambda msg: msg.is_group and msg.type == "text" and answer(msg.text))
def faq(msg):
    # Answer in a thread under the question, and remember the thread to follow it without mentions.
    thread = msg.parent_id or msg.id
    msg.state["threads"] = [*msg.state.get("threads", [])[-49:], thread]
    return Text(answer(msg.text), in_thread=True)


@threads.on_type("text")
def follow_up(msg):
    reply = answer(msg.text)
    if reply is None:
        return f"I don't know that one, {msg.sender.name}; someone from the team will pick it up here."
    return reply  # a reply to a thread message stays in the thread


bot.include_router(mentions)
bot.include_router(threads)


@bot.on_action("joined", "added")
def welcome(msg):
    # For group member events the new member is the entity the action is "on" (PLATFORM.md 2.9).
    member = msg.raw.get("data", {}).get("entities", {}).get("on", {}).get("entity", {})
    return f"Welcome to the group, {member.get('name') or member.get('uid') or 'new member'}!"
