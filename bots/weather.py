"""A command with arguments (/weather Paris tomorrow) and the same question in plain words."""

import zlib

from bot import Router

bot = Router()

SKIES = ["Sunny", "Cloudy", "Light rain", "Windy", "Foggy", "Snow showers"]


def forecast(city: str, day: str = "today") -> str:
    # A stand-in for a weather API: deterministic, so the example is testable offline.
    seed = zlib.crc32(f"{city.lower()}|{day}".encode())
    return f"{SKIES[seed % len(SKIES)]} in {city} {day}, {seed % 30 - 5}°C."


@bot.on_command("weather", "w")
def weather_command(msg, args):
    if not args:
        return "Which city? Try /weather Paris or /weather Paris tomorrow."
    day = "tomorrow" if args[-1].lower() == "tomorrow" else "today"
    city = " ".join(args[:-1] if day == "tomorrow" and len(args) > 1 else args)
    return forecast(city, day)


@bot.on_text(r"\bweather (?:in|for|at) (?P<city>[^?!.,]+)")
def weather_question(msg, city):
    return forecast(city.strip())
