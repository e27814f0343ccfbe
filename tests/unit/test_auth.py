"""Unit tests for :mod:`wsha.auth`: JWT verification of connecting clients."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from wsha.auth import AuthError, TokenVerifier, mint_token

SECRET = "unit-test-secret-" + "x" * 64


def sign(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    """A token with ``claims`` signed by ``key``."""
    return jwt.encode(claims, key, algorithm=algorithm)


def test_valid_token_names_its_user() -> None:
    """A token signed with the key and not expired yields its ``sub``."""
    assert TokenVerifier(SECRET).verify(mint_token(SECRET, "user-42")) == "user-42"


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_refused(token: str | None) -> None:
    """No token at all is an AuthError saying it is missing."""
    with pytest.raises(AuthError, match="missing"):
        TokenVerifier(SECRET).verify(token)


def test_bad_signature_is_refused() -> None:
    """A token signed with another key is invalid."""
    token = mint_token("another-secret-of-decent-length!!!", "u")
    with pytest.raises(AuthError, match="invalid"):
        TokenVerifier(SECRET).verify(token)


def test_expired_token_is_refused_beyond_leeway() -> None:
    """A token expired longer ago than the leeway is refused as expired."""
    token = mint_token(SECRET, "u", ttl=60, now=time.time() - 120)
    with pytest.raises(AuthError, match="expired"):
        TokenVerifier(SECRET, leeway=5).verify(token)


def test_recently_expired_token_passes_within_leeway() -> None:
    """A token expired less than ``leeway`` seconds ago is still accepted."""
    token = sign({"sub": "u", "exp": int(time.time()) - 2})
    assert TokenVerifier(SECRET, leeway=30).verify(token) == "u"


def test_unsigned_alg_none_is_refused() -> None:
    """A token with ``alg: none`` is never accepted."""
    token = jwt.encode({"sub": "u"}, None, algorithm="none")
    with pytest.raises(AuthError, match="invalid"):
        TokenVerifier(SECRET).verify(token)


def test_algorithm_not_listed_is_refused() -> None:
    """A token signed with an algorithm outside ``algorithms`` is refused."""
    token = sign({"sub": "u"}, algorithm="HS512")
    with pytest.raises(AuthError):
        TokenVerifier(SECRET, algorithms=("HS256",)).verify(token)
    assert TokenVerifier(SECRET, algorithms=("HS512",)).verify(token) == "u"


@pytest.mark.parametrize("claims", [{}, {"sub": 42}, {"sub": "a b"}, {"sub": ""}])
def test_missing_or_bad_sub_is_refused(claims: dict[str, Any]) -> None:
    """A token without a valid user id in ``sub`` is refused."""
    with pytest.raises(AuthError):
        TokenVerifier(SECRET).verify(sign(claims))


def test_audience_is_enforced_when_set() -> None:
    """With an audience configured, only tokens carrying that ``aud`` pass."""
    verifier = TokenVerifier(SECRET, audience="wsha")
    assert verifier.verify(sign({"sub": "u", "aud": "wsha"})) == "u"
    with pytest.raises(AuthError):
        verifier.verify(sign({"sub": "u", "aud": "other"}))
    with pytest.raises(AuthError):
        verifier.verify(sign({"sub": "u"}))


def test_garbage_token_is_refused() -> None:
    """A string that is not a JWT is invalid, not an unexpected exception."""
    with pytest.raises(AuthError, match="invalid"):
        TokenVerifier(SECRET).verify("not.a.jwt")


def test_tags_claim_is_returned_with_the_user() -> None:
    """identify() returns the user and the token's tags; verify() the user alone."""
    token = mint_token(SECRET, "u", tags=["gold", "team/eu"])
    identity = TokenVerifier(SECRET).identify(token)
    assert (identity.user, identity.tags) == ("u", frozenset({"gold", "team/eu"}))
    assert TokenVerifier(SECRET).verify(token) == "u"


def test_a_token_without_tags_has_none() -> None:
    """No ``tags`` claim means no tags."""
    assert TokenVerifier(SECRET).identify(mint_token(SECRET, "u")).tags == frozenset()


@pytest.mark.parametrize("tags", ["gold", [1], ["a b"], [""], {"gold": True}])
def test_malformed_tags_are_refused(tags: Any) -> None:
    """A ``tags`` claim that is not a list of tag names makes the token invalid."""
    with pytest.raises(AuthError, match="tags"):
        TokenVerifier(SECRET).identify(sign({"sub": "u", "tags": tags}))
