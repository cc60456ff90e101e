"""Your bot's handlers: every module here that defines ``bot = Router()`` is loaded (in name order).

The router below is their parent: its hooks apply to every module's handlers (like a Flask app's hooks
apply to all its blueprints).
"""

from bot import Router

bot = Router()


@bot.on_error
def apologise(msg, error):
    # The traceback is already logged with the message id; the user gets an answer rather than silence.
    return "Sorry, something went wrong on my side. Please try again in a moment."
