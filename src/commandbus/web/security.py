"""Who is asking and may they: logins (token or basic auth), the CSRF token, and
the checks every action (POST) passes: not read-only, Sec-Fetch-Site, CSRF."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from urllib.parse import quote, urlencode

import attrs

#: The cookie of a browser session (random; the CSRF token is derived from it).
SESSION_COOKIE = "cb_session"
#: The cookie a token login sets (an HMAC of the token, never the token).
AUTH_COOKIE = "cb_auth"
#: Sec-Fetch-Site values of a request a page of this server made (or typed by hand).
SAME_SITE = frozenset({"same-origin", "none"})


@attrs.frozen(kw_only=True)
class Auth:
    """The credentials the server asks for (none: a localhost-only server).

    ``token``: a bearer token (``Authorization: Bearer``, or ``?token=`` once, which
    sets a cookie); ``user`` and ``password``: HTTP basic auth. Either logs in.
    """

    token: str | None = None
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    @property
    def required(self) -> bool:
        return self.token is not None or (self.user is not None and self.password is not None)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Auth:
        """From COMMANDBUS_WEB_TOKEN, COMMANDBUS_WEB_USER and COMMANDBUS_WEB_PASSWORD."""
        token = env.get("COMMANDBUS_WEB_TOKEN") or None
        user = env.get("COMMANDBUS_WEB_USER") or None
        password = env.get("COMMANDBUS_WEB_PASSWORD") or None
        if (user is None) != (password is None):
            raise ValueError("set both COMMANDBUS_WEB_USER and COMMANDBUS_WEB_PASSWORD, or neither")
        return cls(token=token, user=user, password=password)


class Guard:
    """The per-process secret and what is derived from it."""

    def __init__(self, auth: Auth, local_user: str) -> None:
        self.auth = auth
        self.local_user = local_user
        self._secret = secrets.token_bytes(32)

    def _mac(self, what: str) -> str:
        return hmac.new(self._secret, what.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def new_session() -> str:
        return secrets.token_urlsafe(32)

    def csrf_token(self, session: str) -> str:
        return self._mac(f"csrf:{session}")

    def csrf_ok(self, session: str | None, token: object) -> bool:
        if not session or not isinstance(token, str) or not token:
            return False
        return hmac.compare_digest(self.csrf_token(session), token)

    def token_cookie(self) -> str:
        return self._mac("token-login")

    def token_ok(self, given: str | None) -> bool:
        token = self.auth.token
        return (
            token is not None
            and given is not None
            and hmac.compare_digest(given.encode(), token.encode())
        )

    def identity(self, authorization: str | None, auth_cookie: str | None) -> str | None:
        """Who the request is from (None: not logged in, and a login is required)."""
        auth = self.auth
        if not auth.required:
            return self.local_user
        if authorization:
            scheme, _, value = authorization.partition(" ")
            scheme = scheme.lower()
            if scheme == "bearer" and self.token_ok(value.strip()):
                return "token"
            if scheme == "basic" and auth.user is not None and auth.password is not None:
                try:
                    raw = base64.b64decode(value.strip(), validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    return None
                user, _, password = raw.partition(":")
                # both compared every time: no early answer on a wrong user name
                user_ok = hmac.compare_digest(user.encode(), auth.user.encode())
                password_ok = hmac.compare_digest(password.encode(), auth.password.encode())
                if user_ok and password_ok:
                    return user
        if (
            auth.token is not None
            and auth_cookie
            and hmac.compare_digest(auth_cookie, self.token_cookie())
        ):
            return "token"
        return None


def fetch_site_ok(value: str | None) -> bool:
    """An action's Sec-Fetch-Site: absent (an old browser, a script) or same-site."""
    return value is None or value in SAME_SITE


def local_path(path: str) -> str:
    """``path`` (decoded) as a path of this server, percent-encoded: a browser reads
    "//host/x" or "/\\host/x" (the path of a request for "/%2F%2Fhost/x") as another
    server."""
    rest = path.lstrip("/\\")
    # percent-encoded: a raw tab or newline, which browsers drop from a URL, stays
    return "/" + quote(rest, safe="/:@!$&'()*+,;=-._~")


def without(query: Mapping[str, str], name: str) -> str:
    """A query string without one parameter (``?token=`` after a login)."""
    rest = [(k, v) for k, v in query.items() if k != name]
    return ("?" + urlencode(rest)) if rest else ""
