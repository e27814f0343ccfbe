"""Who a connecting client is: verification of its signed token (JWT)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from wsha.wire import is_valid_name, is_valid_user_id


class AuthError(Exception):
    """The token is missing, malformed, badly signed or expired."""


@dataclass(frozen=True)
class Identity:
    """Who a token names: the user id (``sub``), and the tags it carries.

    ``tags`` come from the token's optional ``tags`` claim, a list of names;
    broadcasts can be addressed to the users carrying a tag.
    """

    user: str
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TokenVerifier:
    """Verifies JWTs and returns the user id in their ``sub`` claim (and tags).

    :param key: the HMAC secret (HS*) or the PEM public key (RS*/ES*).
    :param algorithms: the algorithms accepted; never ``none``.
    :param leeway: seconds of clock skew tolerated on ``exp``/``nbf``.
    :param audience: when set, tokens must carry this ``aud``.
    """

    key: str
    algorithms: tuple[str, ...] = ("HS256",)
    leeway: float = 5.0
    audience: str | None = None

    def verify(self, token: str | None) -> str:
        """Return the user id the token names, or raise :class:`AuthError`."""
        return self.identify(token).user

    def identify(self, token: str | None) -> Identity:
        """Return the :class:`Identity` the token names, or raise :class:`AuthError`."""
        if not token:
            raise AuthError("token missing")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                leeway=self.leeway,
                audience=self.audience,
                options={"require": ["sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as e:
            raise AuthError(f"token invalid: {e}") from None
        user = claims["sub"]
        if not isinstance(user, str) or not is_valid_user_id(user):
            raise AuthError("token 'sub' is not a valid user id")
        tags = claims.get("tags", [])
        if not isinstance(tags, list) or not all(
            isinstance(tag, str) and is_valid_name(tag) for tag in tags
        ):
            raise AuthError("token 'tags' is not a list of tag names")
        return Identity(user, frozenset(tags))


def mint_token(
    secret: str,
    user: str,
    ttl: float = 3600.0,
    now: float | None = None,
    audience: str | None = None,
    tags: Iterable[str] | None = None,
) -> str:
    """Sign an HS256 token for ``user`` valid for ``ttl`` seconds (demo and tests).

    :param audience: the ``aud`` claim, for nodes run with ``--jwt-audience``.
    :param tags: the ``tags`` claim, which broadcasts can be addressed to.
    """
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": user, "iat": int(issued), "exp": int(issued + ttl)}
    if audience:
        claims["aud"] = audience
    if tags is not None:
        claims["tags"] = list(tags)
    return jwt.encode(claims, secret, algorithm="HS256")
