"""HS256 JWTs standing in for the Keycloak tokens the real pod orchestrator mints.

The real platform signs RS256 tokens with Keycloak's key; services only check signature and
expiry. Locally one random HMAC secret per platform is enough, and it needs no dependency:
``hmac`` + ``hashlib`` + base64url + orjson.

The claims are ``iat``, ``exp``, ``client_id`` (the analysis id, as Keycloak puts it), ``sub``
(the node id) and a random ``jti``, so two tokens minted in the same second differ. A token is
bound to its node and its analysis: :meth:`TokenIssuer.verify` refuses tokens without a string
``sub`` and ``client_id``, and the services (:func:`~flame_async.local._http.require_bearer`)
accept one only on its own node's gateway. Their JSON
holds only letters, digits, ``"``, ``:``, ``,``, ``-``, ``.``, ``_`` and braces; base64url maps no
3-byte group of such ASCII text to ``-`` or ``_`` (only ``>``, ``?``, ``~`` and DEL in the third
byte would), so even flamesdk 0.6, which decodes the payload as standard base64 (PROTOCOL.md
Q11), reads these tokens correctly. Ids are validated by the platform to keep it that way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from typing import Any

import orjson

from ..errors import FlameError

__all__ = ["MAX_TOKEN_LENGTH", "InvalidToken", "TokenIssuer"]

_HEADER = base64.urlsafe_b64encode(orjson.dumps({"alg": "HS256", "typ": "JWT"})).rstrip(b"=")
_CACHE_SIZE = 1024
"""Verified tokens cached at least; more when more subjects (nodes) got tokens."""
MAX_TOKEN_LENGTH = 4096
"""Longest bearer token verified (the platform's own are about 250 characters)."""


class InvalidToken(FlameError, ValueError):
    """A bearer token is malformed, not signed by this platform, or expired."""


def _b64encode(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class TokenIssuer:
    """Mints and verifies the platform's HS256 tokens.

    Args:
        analysis_id: Written into every token as ``client_id``.
        lifetime: Seconds from ``iat`` to ``exp`` for :meth:`mint` unless it is given one.
        secret: The HMAC key; a random 32-byte key when omitted.
    """

    __slots__ = ("_analysis_id", "_cache", "_lifetime", "_secret", "_subjects")

    def __init__(self, analysis_id: str, *, lifetime: float, secret: bytes | None = None) -> None:
        self._analysis_id = analysis_id
        self._lifetime = lifetime
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        # token -> claims of tokens whose signature already checked out; expiry is still
        # checked on every use. Keeps HMAC + JSON decoding off the per-request path. It holds
        # two tokens per subject (a node's token and the one refreshing it): with thousands
        # of nodes, a smaller cache would be cleared every round and check every token again.
        self._cache: dict[str, dict[str, Any]] = {}
        self._subjects: set[str] = set()
        """Every ``sub`` a token was minted for: the cache holds two tokens for each."""

    @property
    def lifetime(self) -> float:
        """Default token lifetime in seconds."""
        return self._lifetime

    def mint(self, node_id: str, *, lifetime: float | None = None, now: float | None = None) -> str:
        """Return a signed token for ``node_id``.

        Args:
            node_id: Written as ``sub``.
            lifetime: Seconds until ``exp``; the issuer's default when omitted. Negative values
                give an already expired token (for tests).
            now: The ``iat`` as a Unix time; the current time when omitted.
        """
        issued = int(time.time() if now is None else now)
        claims = {
            "iat": issued,
            "exp": issued + round(self._lifetime if lifetime is None else lifetime),
            "client_id": self._analysis_id,
            "sub": node_id,
            "jti": secrets.token_hex(8),
        }
        signing_input = _HEADER + b"." + _b64encode(orjson.dumps(claims))
        signature = hmac.new(self._secret, signing_input, hashlib.sha256).digest()
        self._subjects.add(node_id)
        return (signing_input + b"." + _b64encode(signature)).decode("ascii")

    def verify(self, token: str, *, now: float | None = None) -> dict[str, Any]:
        """Check the token's signature and expiry and return its claims.

        Args:
            token: The compact JWT (without ``Bearer``).
            now: The current Unix time; ``time.time()`` when omitted.

        Raises:
            InvalidToken: The token is longer than :data:`MAX_TOKEN_LENGTH`, malformed, was not
                signed with this issuer's secret, has no string ``sub`` (node id) or
                ``client_id`` (analysis id), or its ``exp`` has passed.
        """
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken(f"the token is longer than {MAX_TOKEN_LENGTH} characters")
        current = time.time() if now is None else now
        claims = self._cache.get(token)
        if claims is None:
            claims = self._check_signature(token)
            if len(self._cache) >= self._cache_limit():
                self._prune(current)
            self._cache[token] = claims
        if claims["exp"] <= current:
            raise InvalidToken("the token has expired")
        return claims

    def _cache_limit(self) -> int:
        return max(_CACHE_SIZE, 2 * len(self._subjects))

    def _prune(self, now: float) -> None:
        """Make room in the cache: drop the expired tokens, and every token if that is not
        enough."""
        cache = self._cache
        expired = [token for token, claims in cache.items() if claims["exp"] <= now]
        for token in expired:
            del cache[token]
        if len(cache) >= self._cache_limit():
            cache.clear()

    def _check_signature(self, token: str) -> dict[str, Any]:
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidToken("the token is not a JWT (expected 3 dot-separated parts)")
        header, payload, signature = parts
        try:
            signing_input = f"{header}.{payload}".encode("ascii")
            given = _b64decode(signature)
        except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
            raise InvalidToken("the token is not base64url-encoded") from exc
        expected = hmac.new(self._secret, signing_input, hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected):
            raise InvalidToken("the token signature is invalid")
        try:
            head = orjson.loads(_b64decode(header))
            claims = orjson.loads(_b64decode(payload))
        except (binascii.Error, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
            raise InvalidToken("the token is not base64url-encoded JSON") from exc
        if not isinstance(head, dict) or head.get("alg") != "HS256":
            raise InvalidToken("the token is not signed with HS256")
        if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int | float):
            raise InvalidToken("the token has no numeric exp claim")
        for name, meaning in (("sub", "node id"), ("client_id", "analysis id")):
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise InvalidToken(f"the token has no {name} claim (its {meaning})")
        return claims
