"""Group chats: answer a bare mention, welcome new members."""

from bot import Router

bot = Router()


@bot.on_message(lambda msg: msg.is_group and msg.bot_mentioned and not msg.text)
def mentioned(msg):
    return f"Yes, {msg.sender.name}? Ask me about the weather (/weather Paris) or type /help."


@bot.on_action("joined", "added")
def welcome(msg):
    # For group member events the new member is the entity the action is "on" (PLATFORM.md 2.9).
    member = msg.raw.get("data", {}).get("entities", {}).get("on", {}).get("entity", {})
    return f"Welcome to the group, {member.get('name') or member.get('uid') or 'new member'}!"
