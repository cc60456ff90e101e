"""Reactions to images, files, audio, video and shared locations."""

from bot import Custom, Image, Router

bot = Router()


def human_size(size: int | None) -> str:
    if size is None:
        return "unknown size"
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} bytes"  # pragma: no cover - the loop always returns


@bot.on_type("image")
def got_image(msg):
    picture = msg.attachments[0]
    return [f"Nice picture, {msg.sender.name}!", Image(url=picture.url, name=picture.name)]


@bot.on_type("file", "audio", "video")
def got_file(msg):
    if not msg.attachments:
        return f"Your {msg.type} arrived without an attachment."
    item = msg.attachments[0]
    return f"Thanks for the {msg.type} {item.name} ({human_size(item.size)})."


@bot.on_custom("location")
def got_location(msg):
    data = msg.custom_data or {}
    lat, lng = data.get("latitude", data.get("lat")), data.get("longitude", data.get("lng"))
    if lat is None or lng is None:
        return "That location has no coordinates."
    return [
        f"You are at {lat:.4f}, {lng:.4f}.",
        Custom("location", {"latitude": lat, "longitude": lng, "label": "You are here"}),
    ]


@bot.on_custom("poll_vote")
def got_vote(msg):
    vote = msg.custom_data or {}
    return (
        f"Thanks {msg.sender.name}, your vote for {vote.get('option', '?')} in the {vote.get('poll', '?')} poll counts."
    )
