"""Who may use the console: tokens, the signed session cookie, and CSRF.

Two kinds of token (ROUTER_CONSOLE_TOKENS, ROUTER_CONSOLE_VIEWER_TOKENS): an operator's may
replay, pause and resume, a viewer's only reads. A token is checked against every configured
one in constant time, so timing tells nothing of which (or whether one) was close. Tokens are
never logged, stored or shown; a session names its token by a keyed fingerprint only.

The API takes the token as a bearer (`Authorization: Bearer …`) on every call. The pages log in
once with it and then carry a session cookie: signed (itsdangerous), HttpOnly, SameSite=Strict,
Secure over HTTPS (or always, with ROUTER_CONSOLE_SECURE_COOKIE), lasting
ROUTER_CONSOLE_SESSION_HOURS. The signing key is derived from the tokens, so every replica
configured alike accepts the cookie of another, and removing a token ends its sessions.
Every state-changing form carries the session's CSRF token, compared in constant time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "router_console"
SALT = "router.console.session"
CSRF_FIELD = "csrf"


class Role(enum.StrEnum):
    OPERATOR = "operator"  # reads, replays, pauses and resumes
    VIEWER = "viewer"  # reads only


@dataclass(frozen=True, slots=True)
class Session:
    role: Role
    fingerprint: str  # of the token that logged in
    csrf: str

    @property
    def may_change(self) -> bool:
        return self.role is Role.OPERATOR


class Access:
    """The configured tokens, and the sessions they open."""

    def __init__(
        self,
        operators: Sequence[str],
        viewers: Sequence[str] = (),
        *,
        session_seconds: float = 12 * 3600,
        secure_cookie: bool = False,
    ) -> None:
        self._tokens = [(t.encode(), Role.OPERATOR) for t in operators] + [
            (t.encode(), Role.VIEWER) for t in viewers
        ]
        # The key signs cookies and fingerprints tokens; derived from every token, in order.
        material = b"\0".join(sorted(token for token, _ in self._tokens))
        self._key = hashlib.sha256(b"router console key\0" + material).digest()
        self._fingerprints = {self._fingerprint(token): role for token, role in self._tokens}
        self._serializer = URLSafeTimedSerializer(self._key, salt=SALT)
        self.session_seconds = session_seconds
        self.secure_cookie = secure_cookie

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def _fingerprint(self, token: bytes) -> str:
        return hmac.new(self._key, token, hashlib.sha256).hexdigest()[:32]

    def role_of(self, token: str) -> Role | None:
        """The role `token` (as typed in a form) gives, or None."""
        return self._role_of(token.encode("utf-8", "surrogateescape"))

    def _role_of(self, given: bytes) -> Role | None:
        """The role of the token `given`, or None; the same time whatever it is."""
        found: Role | None = None
        for candidate, role in self._tokens:  # every one, whatever matched
            if hmac.compare_digest(given, candidate) and found is None:
                found = role
        return found

    def bearer(self, authorization: str | None) -> Role | None:
        """The role of an `Authorization: Bearer TOKEN` header, or None."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        # Starlette decodes header values as Latin-1: encoding back gives the bytes sent.
        return self._role_of(token.strip().encode("latin-1"))

    def open_session(self, token: str) -> str | None:
        """A new session cookie's value for `token`, or None when it is not a console token."""
        role = self.role_of(token)
        if role is None:
            return None
        fingerprint = self._fingerprint(token.encode("utf-8", "surrogateescape"))
        payload = {"r": str(role), "f": fingerprint, "c": secrets.token_urlsafe(24)}
        return self._serializer.dumps(payload)

    def session(self, cookie: str | None) -> Session | None:
        """The session a cookie holds: signed by this key, not expired, and its token still
        configured (with the role it has now). None otherwise."""
        if not cookie:
            return None
        try:
            payload = self._serializer.loads(cookie, max_age=int(self.session_seconds))
        except BadSignature:
            return None
        if not isinstance(payload, dict):
            return None
        fingerprint, csrf = payload.get("f"), payload.get("c")
        if not isinstance(fingerprint, str) or not isinstance(csrf, str):
            return None
        role = self._fingerprints.get(fingerprint)
        return None if role is None else Session(role, fingerprint, csrf)

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return hmac.compare_digest(session.csrf.encode(), (given or "").encode())
