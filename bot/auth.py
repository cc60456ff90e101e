"""Basic auth of the callback, compared in constant time.

CometChat sends ``Authorization: Basic base64(user:password)`` on every
callback when the bot has ``useBasicAuth`` (PLATFORM.md 3). There is no
signature or timestamp, so the credentials are the only proof of origin.
"""

from __future__ import annotations

import base64
import hmac

from werkzeug.datastructures import Authorization


class BasicAuth:
    def __init__(self, username: str, password: str) -> None:
        self._username = username.encode()
        self._password = password.encode()
        # The header as CometChat writes it, compared first as a whole: parsing it (werkzeug's Authorization)
        # costs ~27,000 instructions per callback (callgrind), the comparison a few hundred.
        self._header = b"Basic " + base64.b64encode(self._username + b":" + self._password)

    def check_header(self, value: str | None) -> bool:
        """True when the ``Authorization`` header carries exactly the configured credentials.

        Any other spelling of the same credentials (``basic``, other
        whitespace) is parsed and compared field by field; either way the
        comparisons take the same time whatever the secret's content.
        """
        raw = (value or "").encode("latin-1", "replace")
        if hmac.compare_digest(raw, self._header):
            return True
        return self.check(Authorization.from_header(value))

    def check(self, authorization: Authorization | None) -> bool:
        """True when the parsed header carries exactly the configured credentials."""
        if authorization is None or authorization.type != "basic":
            # Still compare, so a missing header costs the same as a wrong one.
            hmac.compare_digest(self._username, b"")
            return False
        username = (authorization.username or "").encode()
        password = (authorization.password or "").encode()
        # `&`, not `and`: both comparisons always run.
        return hmac.compare_digest(username, self._username) & hmac.compare_digest(password, self._password)
