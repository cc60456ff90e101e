"""Your bot's handlers: every module here that defines ``bot = Router()`` is loaded (in name order)."""
