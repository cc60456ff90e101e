"""A multi-step dialog: /book asks for a city, then shows a form; the submitted form completes the booking.

Shows conversation state (``msg.state``, ``state=`` on a route), a form and its submission (``on_submit``),
and a dialog that can be cancelled at any step. The state is kept per user (``state_scope="user"``), so in a
group several people can book at once without mixing their answers.
"""

from bot import Dropdown, Form, Router, SingleSelect, TextInput

bot = Router(state_scope="user")

TIMES = ["18:30", "19:00", "19:30", "20:00", "20:30", "21:00"]
PARTY = {"2": "2 people", "4": "3-4 people", "6": "5-6 people"}


@bot.on_command("book")
def start(msg):
    msg.state.clear()
    msg.state.step = "city"
    return "Let's book a table. In which city? (/cancel stops at any time)"


@bot.on_command("cancel", state="*")
def cancel(msg):
    msg.state.clear()
    return "Booking cancelled. Type /book to start again."


@bot.on_text(r"^[^/].*", state="city")
def city(msg):
    place = msg.text.strip().title()
    msg.state["city"] = place
    msg.state.step = "details"
    return [
        f"{place}, good choice. A few details:",
        Form(
            "booking",
            title=f"Table in {place}",
            fields=[
                TextInput("name", "Name on the booking", placeholder="Your name"),
                Dropdown("time", "Time", TIMES, default="20:00"),
                SingleSelect("party", "Party size", PARTY, default="2"),
            ],
            submit="Book",
            goal_completion_text="Booked!",
        ),
    ]


@bot.on_text(r"^[^/].*", state="details")
def waiting_for_form(msg):
    return "Please fill in the form above (or /cancel)."


@bot.on_submit("booking", state="details")
def booked(msg, values):
    # Form values are what the user's client sent: check them like any user input.
    name = str(values.get("name", "")).strip()
    if not name:
        return "The booking needs a name; please fill it in and submit again."
    if values.get("time") not in TIMES or values.get("party") not in PARTY:
        return "Please pick a time and a party size from the lists."
    place = msg.state.get("city", "?")
    msg.state.clear()
    msg.mark_interacted()
    return f"Booked: a table for {PARTY[values['party']]} in {place} at {values['time']}, under {name}. See you!"


@bot.on_submit("booking")
def stale_form(msg):
    return "That form belongs to a booking that is finished or cancelled. Type /book to start a new one."
