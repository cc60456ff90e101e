"""Basic auth of the callback, compared in constant time.

CometChat sends ``Authorization: Basic base64(user:password)`` on every
callback when the bot has ``useBasicAuth`` (PLATFORM.md 3). There is no
signature or timestamp, so the credentials are the only proof of origin.
"""

from __future__ import annotations

import hmac

from werkzeug.datastructures import Authorization


class BasicAuth:
    def __init__(self, username: str, password: str) -> None:
        self._username = username.encode()
        self._password = password.encode()

    def check(self, authorization: Authorization | None) -> bool:
        """True when the header carries exactly the configured credentials."""
        if authorization is None or authorization.type != "basic":
            # Still compare, so a missing header costs the same as a wrong one.
            hmac.compare_digest(self._username, b"")
            return False
        username = (authorization.username or "").encode()
        password = (authorization.password or "").encode()
        # `&`, not `and`: both comparisons always run.
        return hmac.compare_digest(username, self._username) & hmac.compare_digest(password, self._password)
