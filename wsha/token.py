"""wsha-token: print a signed HS256 token for a user (development helper)."""

from __future__ import annotations

import argparse
import os
import sys

from wsha.auth import mint_token


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, mint the token and print it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("user", help="the user id to put in 'sub'")
    parser.add_argument("--ttl", type=float, default=3600.0, help="seconds it is valid")
    parser.add_argument("--audience", help="the 'aud' claim, if the node requires one")
    parser.add_argument(
        "--tag",
        action="append",
        dest="tags",
        help="a tag for the 'tags' claim (broadcast audiences); repeatable",
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get("WSHA_JWT_SECRET"),
        help="HS256 secret (default: $WSHA_JWT_SECRET)",
    )
    args = parser.parse_args(argv)
    if not args.secret:
        parser.error("no secret: pass --secret or set WSHA_JWT_SECRET")
    sys.stdout.write(
        mint_token(
            args.secret, args.user, args.ttl, audience=args.audience, tags=args.tags
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
