"""The platform's HS256 tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import orjson
import pytest

from flame_async._jwt import decode_claims, remaining_seconds
from flame_async.local import InvalidToken
from flame_async.local._tokens import TokenIssuer


def test_minted_token_verifies_and_carries_the_claims() -> None:
    issuer = TokenIssuer("analysis-1", lifetime=600)
    token = issuer.mint("node-a", now=1_000_000)
    claims = issuer.verify(token, now=1_000_001)
    assert claims["iat"] == 1_000_000
    assert claims["exp"] == 1_000_600
    assert (claims["client_id"], claims["sub"]) == ("analysis-1", "node-a")
    assert decode_claims(token) == claims
    assert 595 <= remaining_seconds(issuer.mint("node-a")) <= 600


def test_tokens_minted_together_differ() -> None:
    issuer = TokenIssuer("a", lifetime=60)
    assert issuer.mint("n", now=5) != issuer.mint("n", now=5)


def test_expired_token_is_rejected() -> None:
    issuer = TokenIssuer("a", lifetime=60)
    token = issuer.mint("n", now=1000)
    issuer.verify(token, now=1059)  # cached after this, expiry still checked
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(token, now=1060)
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(issuer.mint("n", lifetime=-1))


def test_every_node_token_of_a_large_platform_stays_verified(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With 3,000 nodes each using its token in turn, each signature is checked once: a
    cache smaller than the platform would be cleared every round and check them all again."""
    issuer = TokenIssuer("a", lifetime=600)
    tokens = [issuer.mint(f"node-{i}", now=1000) for i in range(3000)]
    checked: list[str] = []
    check = TokenIssuer._check_signature

    def counting(self: TokenIssuer, token: str) -> dict[str, object]:
        checked.append(token)
        return check(self, token)

    monkeypatch.setattr(TokenIssuer, "_check_signature", counting)
    for _ in range(3):
        for token in tokens:
            issuer.verify(token, now=1001)
    assert len(checked) == len(tokens)


def test_the_token_cache_stays_bounded_and_drops_expired_tokens_first() -> None:
    issuer = TokenIssuer("a", lifetime=60)
    old = [issuer.mint("n", now=1000, lifetime=10) for _ in range(1024)]
    for token in old:
        issuer.verify(token, now=1001)
    fresh = issuer.mint("n", now=1020)
    issuer.verify(fresh, now=1020)  # the cache is full: the expired ones go, not this one
    assert list(issuer._cache) == [fresh]
    live = [issuer.mint("n", now=1020) for _ in range(3000)]  # one subject: 1,024 at most
    for token in live:
        issuer.verify(token, now=1021)
    assert len(issuer._cache) <= 1024


def test_token_of_another_issuer_is_rejected() -> None:
    token = TokenIssuer("a", lifetime=60).mint("n")
    with pytest.raises(InvalidToken, match="signature"):
        TokenIssuer("a", lifetime=60).verify(token)


def test_tampered_claims_are_rejected() -> None:
    issuer = TokenIssuer("a", lifetime=60)
    header, _, signature = issuer.mint("n").split(".")
    forged = base64.urlsafe_b64encode(
        orjson.dumps({"exp": 2**40, "client_id": "a", "sub": "other"})
    ).rstrip(b"=")
    with pytest.raises(InvalidToken):
        issuer.verify(f"{header}.{forged.decode()}.{signature}")


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c", "ä.b.c", "a.b.c.d"])
def test_malformed_tokens_are_rejected(token: str) -> None:
    with pytest.raises(InvalidToken):
        TokenIssuer("a", lifetime=60).verify(token)


def test_a_validly_signed_token_without_hs256_exp_sub_or_client_id_is_rejected() -> None:
    secret = b"k" * 32
    issuer = TokenIssuer("a", lifetime=60, secret=secret)

    def sign(header: dict[str, object], claims: dict[str, object]) -> str:
        def enc(raw: bytes) -> bytes:
            return base64.urlsafe_b64encode(raw).rstrip(b"=")

        signing_input = enc(orjson.dumps(header)) + b"." + enc(orjson.dumps(claims))
        signature = enc(hmac.new(secret, signing_input, hashlib.sha256).digest())
        return (signing_input + b"." + signature).decode()

    with pytest.raises(InvalidToken, match="HS256"):
        issuer.verify(sign({"alg": "none"}, {"exp": time.time() + 60}))
    with pytest.raises(InvalidToken, match="exp"):
        issuer.verify(sign({"alg": "HS256"}, {"sub": "n"}))
    # a token is bound to a node and an analysis: it names both
    exp = time.time() + 60
    with pytest.raises(InvalidToken, match=r"no sub claim \(its node id\)"):
        issuer.verify(sign({"alg": "HS256"}, {"exp": exp, "client_id": "a"}))
    with pytest.raises(InvalidToken, match="no sub claim"):
        issuer.verify(sign({"alg": "HS256"}, {"exp": exp, "client_id": "a", "sub": 5}))
    with pytest.raises(InvalidToken, match=r"no client_id claim \(its analysis id\)"):
        issuer.verify(sign({"alg": "HS256"}, {"exp": exp, "sub": "n"}))
    assert issuer.verify(sign({"alg": "HS256"}, {"exp": exp, "sub": "n", "client_id": "a"}))


def test_overlong_tokens_are_refused_without_being_checked() -> None:
    with pytest.raises(InvalidToken, match="longer than 4096 characters"):
        TokenIssuer("a", lifetime=60).verify("a." * 3000)


@pytest.mark.parametrize("node_id", ["node-1", "a", "hospital-zz9", "0-0-0-0", "x" * 39])
@pytest.mark.parametrize("analysis_id", ["6f1c0e36-5d2e-4d1b-9d54-b2a4b44c6a10", "A.b_c-D"])
def test_payload_is_readable_as_standard_base64(node_id: str, analysis_id: str) -> None:
    """flamesdk 0.6 decodes the payload with standard base64 (PROTOCOL.md Q11)."""
    issuer = TokenIssuer(analysis_id, lifetime=3600)
    for _ in range(20):
        payload = issuer.mint(node_id).split(".")[1]
        assert "-" not in payload
        assert "_" not in payload
        assert orjson.loads(base64.b64decode(payload + "=="))["sub"] == node_id
