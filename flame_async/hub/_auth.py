"""Credentials for the Hub's auth service (authup) and the token manager.

Rules (measured on authup 1.0.0-beta.26; see the Hub client docs):

- ``POST {auth}/token`` with a JSON grant answers ``access_token``, ``expires_in`` and, for a
  password login, a ``refresh_token``.
- ``expires_in`` says 3600 whatever the server's real lifetime is; only the JWT's ``exp`` is
  true. A token's lifetime is therefore ``min(expires_in, exp - iat)``.
- An expired token gets 500 (not 401) from core and authup; a malformed one gets 400.
- Refresh tokens are single-use: two concurrent refreshes with the same one make one fail
  (``inactive_token``). Token requests are therefore single-flight: whoever finds the token
  stale fetches a new one, everybody else waits for that one.
- A refused or failed refresh falls back to the password grant.

Secrets are :class:`~pydantic.SecretStr` and never appear in ``repr``, logs or errors.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeAlias

from pydantic import SecretStr

from .._jwt import decode_claims
from ..errors import AuthenticationError, HubResponseInvalid, ServiceError, TransportError

__all__ = [
    "ClientAuth",
    "Credentials",
    "PasswordAuth",
    "RobotAuth",
    "StaticToken",
    "TokenManager",
]

log = logging.getLogger("flame_async.hub")

MIN_MARGIN: Final = 2.0
"""Seconds before expiry at which a token is refreshed at the latest."""
MARGIN_SHARE: Final = 0.1
"""Share of a token's lifetime left at which it is refreshed."""


def _secret(value: str | SecretStr) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(value)


class PasswordAuth:
    """Log in as a user with name and password (``grant_type=password``); refreshed with the
    refresh token, falling back to the password when a refresh is refused."""

    __slots__ = ("password", "username")

    def __init__(self, username: str, password: str | SecretStr) -> None:
        self.username = username
        self.password = _secret(password)

    def __repr__(self) -> str:
        return f"PasswordAuth({self.username!r}, password='**********')"

    def grant(self) -> dict[str, str]:
        """The token request's body (holds the secret: never log it)."""
        return {
            "grant_type": "password",
            "username": self.username,
            "password": self.password.get_secret_value(),
        }


class RobotAuth:
    """Log in as an authup robot (``grant_type=robot_credentials``; authup 1.0 betas, Hubs of
    the 0.8 line)."""

    __slots__ = ("robot_id", "secret")

    def __init__(self, robot_id: str, secret: str | SecretStr) -> None:
        self.robot_id = str(robot_id)
        self.secret = _secret(secret)

    def __repr__(self) -> str:
        return f"RobotAuth({self.robot_id!r}, secret='**********')"

    def grant(self) -> dict[str, str]:
        """The token request's body (holds the secret: never log it)."""
        return {
            "grant_type": "robot_credentials",
            "id": self.robot_id,
            "secret": self.secret.get_secret_value(),
        }


class ClientAuth:
    """Log in as an authup client (``grant_type=client_credentials``; newer authup, what
    ``flame_hub`` 1.x calls ``ClientAuth``)."""

    __slots__ = ("client_id", "client_secret")

    def __init__(self, client_id: str, client_secret: str | SecretStr) -> None:
        self.client_id = str(client_id)
        self.client_secret = _secret(client_secret)

    def __repr__(self) -> str:
        return f"ClientAuth({self.client_id!r}, client_secret='**********')"

    def grant(self) -> dict[str, str]:
        """The token request's body (holds the secret: never log it)."""
        return {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.client_secret.get_secret_value(),
        }


class StaticToken:
    """Use a token obtained elsewhere; it is never refreshed (when it expires, requests fail
    with :class:`~flame_async.errors.AuthenticationError`)."""

    __slots__ = ("token",)

    def __init__(self, token: str | SecretStr) -> None:
        self.token = _secret(token)

    def __repr__(self) -> str:
        return "StaticToken('**********')"


Credentials: TypeAlias = PasswordAuth | RobotAuth | ClientAuth | StaticToken
"""Who the client logs in as."""


class TokenPoster(Protocol):
    """Sends one grant to the token endpoint and returns the JSON answer."""

    def __call__(self, grant: dict[str, str], /) -> Awaitable[Any]:
        """POST ``grant`` to ``{auth}/token``.

        Raises:
            TransportError: The request failed (mapped status, connection, timeout).
        """
        ...


class _Token:
    __slots__ = ("expires", "lifetime", "obtained", "value", "verified")

    def __init__(self, value: str, lifetime: float, obtained: float) -> None:
        self.value = value
        self.lifetime = lifetime
        self.obtained = obtained
        self.expires = obtained + lifetime
        self.verified = False  # set once a request with it succeeded

    @property
    def margin(self) -> float:
        return max(MIN_MARGIN, MARGIN_SHARE * self.lifetime)


def lifetime_of(access_token: str, expires_in: object) -> float:
    """Seconds a fresh token lives: the smaller of ``expires_in`` and its JWT ``exp - iat``.

    authup reports ``expires_in: 3600`` whatever its configured lifetime; the JWT's claims are
    the truth. When neither is usable, 60 s (refreshed early rather than late).
    """
    candidates: list[float] = []
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        candidates.append(float(expires_in))
    try:
        claims = decode_claims(access_token)
    except ValueError:
        claims = {}
    exp, iat = claims.get("exp"), claims.get("iat")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        if isinstance(iat, int | float) and not isinstance(iat, bool):
            candidates.append(float(exp) - float(iat))
        else:
            candidates.append(float(exp) - time.time())
    usable = [c for c in candidates if math.isfinite(c) and c > 0]
    return min(usable) if usable else 60.0


def _expired(token: str) -> bool:
    """Whether a JWT's ``exp`` has passed by the wall clock (False when it has none)."""
    try:
        exp = decode_claims(token).get("exp")
    except ValueError:
        return False
    return isinstance(exp, int | float) and not isinstance(exp, bool) and exp <= time.time()


class TokenManager:
    """Hands out a valid access token; fetches and refreshes it single-flight.

    Args:
        credentials: Who to log in as.
        post: Sends a grant to the token endpoint (the client's session does it).
        auth_url: The token endpoint, named in errors.
        clock: Monotonic seconds (injectable for tests).

    Attributes:
        grants: How many token requests were sent, by grant type (for tests and benchmarks).
    """

    def __init__(
        self,
        credentials: Credentials,
        post: TokenPoster,
        *,
        auth_url: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._credentials = credentials
        self._post = post
        self._auth_url = auth_url
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: _Token | None = None
        self._refresh: SecretStr | None = None
        self._generation = 0
        self.grants: dict[str, int] = {}
        if isinstance(credentials, StaticToken):
            self._token = _Token(
                credentials.token.get_secret_value(),
                lifetime_of(credentials.token.get_secret_value(), None),
                clock(),
            )
            self._token.expires = math.inf  # never refreshed; the server decides

    def __repr__(self) -> str:
        return f"TokenManager({self._credentials!r})"

    @property
    def refreshable(self) -> bool:
        """Whether a new token can be obtained (not for :class:`StaticToken`)."""
        return not isinstance(self._credentials, StaticToken)

    def _fresh(self, token: _Token | None) -> bool:
        return token is not None and token.expires - self._clock() > token.margin

    async def token(self) -> str:
        """A valid access token: the current one, or a new one if it is missing or expiring.

        Raises:
            AuthenticationError: The auth service refused the credentials.
            TransportError: The auth service could not be reached or failed.

        Cancellation:
            Safe: a token request cut off is repeated by the next caller (a consumed refresh
            token then fails and the password grant takes over).
        """
        token = self._token
        if self._fresh(token) or not self.refreshable:
            assert token is not None
            return token.value
        generation = self._generation
        async with self._lock:
            token = self._token
            if token is not None and (
                self._fresh(token)
                # somebody obtained it while we waited: take it while it is not yet expired,
                # even inside its margin (tokens living under 2 s would otherwise thrash)
                or (self._generation != generation and token.expires > self._clock())
            ):
                return token.value
            token = await self._obtain()
            self._token = token
            self._generation += 1
            return token.value

    def verified(self, value: str) -> None:
        """Record that a request carrying ``value`` succeeded (the server took the token)."""
        token = self._token
        if token is not None and token.value == value:
            token.verified = True

    def suspect(self, value: str, *, status: int, code: str) -> bool:
        """Whether an error answer to a request carrying ``value`` may be a token problem.

        401 always; 400 and 500 when the token was never seen working, is within its margin
        of expiry (or past it), or the error code names a token problem.
        """
        if not self.refreshable:
            return False
        if status == 401:
            return True
        if status not in (400, 500):
            return False
        if "token" in code.lower():
            return True
        token = self._token
        if token is None or token.value != value:
            return True  # replaced meanwhile: the request used an old token
        return not token.verified or token.expires - self._clock() <= token.margin

    def invalidate(self, value: str) -> None:
        """Forget ``value`` if it is still the current token (a newer one is kept)."""
        token = self._token
        if token is not None and token.value == value and self.refreshable:
            self._token = None

    async def _obtain(self) -> _Token:
        credentials = self._credentials
        refresh = self._refresh
        if refresh is not None and _expired(refresh.get_secret_value()):
            refresh = None  # its JWT says it is dead: the server would answer 500
        if isinstance(credentials, PasswordAuth) and refresh is not None:
            self._refresh = None  # single-use, whatever happens next
            try:
                return await self._grant(
                    {"grant_type": "refresh_token", "refresh_token": refresh.get_secret_value()}
                )
            except (TransportError, HubResponseInvalid) as exc:
                log.debug("token refresh failed (%s); logging in with the password again", exc)
        assert not isinstance(credentials, StaticToken)
        return await self._grant(credentials.grant())

    async def _grant(self, grant: dict[str, str]) -> _Token:
        kind = grant["grant_type"]
        self.grants[kind] = self.grants.get(kind, 0) + 1
        started = self._clock()
        try:
            answer = await self._post(grant)
        except ServiceError as exc:
            if exc.status in (400, 401, 403):
                raise AuthenticationError(
                    service="hub auth",
                    method="POST",
                    url=self._auth_url,
                    status=exc.status,
                    detail=f"the {kind} grant was refused: {exc.detail or exc.code}",
                    code=exc.code,
                    issues=exc.issues,
                ) from exc
            raise
        access = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(access, str) or not access:
            raise HubResponseInvalid(
                "TokenGrant", self._auth_url, [{"loc": ("access_token",), "msg": "missing"}]
            )
        refresh = answer.get("refresh_token")
        self._refresh = SecretStr(refresh) if isinstance(refresh, str) and refresh else None
        lifetime = lifetime_of(access, answer.get("expires_in"))
        log.debug("obtained a token (%s grant) living %.1f s", kind, lifetime)
        return _Token(access, lifetime, started)
