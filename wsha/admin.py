"""``wsha-admin`` (``python -m wsha.admin``): run a cluster through its control APIs.

Subcommands: ``status`` (nodes, states, versions, load), ``user ID`` (where a
user's sessions are), ``kick USER [SESSION]``, ``drain NODE``, ``move NODE
--share S``, ``broadcast --audience A BODY``. ``--control URL`` names any
node's control API (the others are found through its ``/v1/nodes``);
``--token`` or ``WSHA_CONTROL_TOKEN`` is the control token. Tables for people
by default, ``--json`` for scripts. Exit status: 0 done, 1 refused or
unreachable, 2 wrong usage. Documented in docs/admin.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from wsha.admin_client import AdminError, CommandRefused, ControlClient

DEFAULT_CONTROL_URL = "http://127.0.0.1:8081"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows under headers, columns padded; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) for row in rows)
        for i in range(len(headers))
    ]
    lines = []
    for row in cells:
        padded = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """A short human duration: ``45s``, ``12m05s``, ``3h07m``, ``2d04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def parse_audience(text: str) -> Any:
    """``all``, ``tag:NAME`` or ``node:ID`` as the broadcast API spells it."""
    if text == "all":
        return "all"
    kind, sep, value = text.partition(":")
    if sep and kind in ("tag", "node") and value:
        return {kind: value}
    raise argparse.ArgumentTypeError("audience must be all, tag:NAME or node:ID")


def _yes_no(value: bool | None) -> str:
    return {True: "yes", False: "NO", None: "no answer"}[value]


def show_status(client: ControlClient, as_json: bool, out: TextIO) -> int:
    """Nodes with state, readiness, version and load, then a summary per version."""
    listing = client.nodes()
    nodes = listing["nodes"]
    ready = {n["id"]: client.readiness(n["control_url"]) for n in nodes}
    if as_json:
        json.dump({**listing, "ready": ready}, out)
        out.write("\n")
        return 0
    now_ms = time.time() * 1000
    rows = [
        [
            n["id"],
            n["state"],
            _yes_no(ready[n["id"]]),
            n["version"],
            int(n["connections"]),
            duration((now_ms - n["started_at"]) / 1000),
            duration((now_ms - n["heartbeat_at"]) / 1000) + " ago",
            n["control_url"],
        ]
        for n in nodes
    ]
    headers = ["NODE", "STATE", "READY", "VERSION", "CONNS", "UP", "HEARTBEAT"]
    print(table([*headers, "CONTROL"], rows), file=out)
    total = sum(int(n["connections"]) for n in nodes) or 1
    versions: dict[str, list[int]] = {}
    for n in nodes:
        versions.setdefault(n["version"], []).append(int(n["connections"]))
    print("", file=out)
    summary = [
        [v, len(c), sum(c), f"{100 * sum(c) / total:.0f}%"]
        for v, c in sorted(versions.items())
    ]
    print(table(["VERSION", "NODES", "CONNS", "SHARE"], summary), file=out)
    if listing.get("dead"):
        print(f"\ndead: {', '.join(listing['dead'])}", file=out)
    return 0


def show_user(client: ControlClient, user: str, as_json: bool, out: TextIO) -> int:
    """A user's sessions: online or not, on which node, epoch, cursor."""
    found = client.user(user)
    if as_json:
        json.dump(found, out)
        out.write("\n")
        return 0
    sessions = found["sessions"]
    online = sum(1 for s in sessions if s["online"])
    print(f"user {user}: {online} of {len(sessions)} sessions online", file=out)
    if sessions:
        rows = [
            [
                s["session"],
                "yes" if s["online"] else "no",
                s["node"] or "-",
                int(s["epoch"]),
                s["cursor"],
                duration(time.time() - s["seen"] / 1000) + " ago",
            ]
            for s in sessions
        ]
        headers = ["SESSION", "ONLINE", "NODE", "EPOCH", "CURSOR", "SEEN"]
        print(table(headers, rows), file=out)
    return 0


def kick(client: ControlClient, args: argparse.Namespace, out: TextIO) -> int:
    """Kick, then (unless ``--no-wait``) wait until the sessions are offline."""
    answer = client.kick(args.user, args.session)
    kicked = answer["kicked"]
    left = [] if args.no_wait else client.wait_closed(args.user, kicked, args.wait)
    if args.json:
        json.dump({**answer, "still_online": left}, out)
        out.write("\n")
    elif not kicked:
        print(f"{args.user}: no session online, nothing to kick", file=out)
    else:
        for k in kicked:
            state = "still online" if k["session"] in left else "closed"
            if args.no_wait:
                state = "told to close"
            print(f"{args.user}/{k['session']} on {k['node']}: {state}", file=out)
    return 1 if left else 0


def _answer(as_json: bool, answer: dict[str, Any], text: str, out: TextIO) -> int:
    if as_json:
        json.dump(answer, out)
        out.write("\n")
    else:
        print(text, file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="wsha-admin",
        description="Operate a wsha cluster through its nodes' control APIs.",
    )
    parser.add_argument(
        "--control",
        default=os.environ.get("WSHA_CONTROL_URL", DEFAULT_CONTROL_URL),
        help="any node's control API [WSHA_CONTROL_URL or %(default)s]",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("WSHA_CONTROL_TOKEN"),
        help="control token [WSHA_CONTROL_TOKEN]",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per request [10]"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("status", help="nodes, states, versions and load")
    user = commands.add_parser("user", help="where a user's sessions are")
    user.add_argument("user")

    kicking = commands.add_parser("kick", help="close a user's connections (1008)")
    kicking.add_argument("user")
    kicking.add_argument("session", nargs="?")
    kicking.add_argument("--no-wait", action="store_true", help="do not wait")
    kicking.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for the close [10]"
    )

    drain = commands.add_parser("drain", help="drain a node: clients move, it stops")
    drain.add_argument("node", help="node id (see status)")
    drain.add_argument("--window", type=float, help="seconds to spread the moves over")

    move = commands.add_parser("move", help="move a share of a node's sessions away")
    move.add_argument("node", help="node id (see status)")
    move.add_argument(
        "--share", type=float, required=True, help="0-1; 0 stops a move in progress"
    )
    move.add_argument(
        "--over", type=float, default=10.0, help="seconds to spread them over [10]"
    )

    cast = commands.add_parser("broadcast", help="send a system broadcast")
    cast.add_argument(
        "--audience", type=parse_audience, required=True, help="all, tag:T or node:N"
    )
    cast.add_argument("--from", dest="sender", help="sender shown [server]")
    cast.add_argument("--id", help="idempotency id (a retry with it is not resent)")
    cast.add_argument("--text", action="store_true", help="BODY is a plain string")
    cast.add_argument("body", help="the body, as JSON (or text with --text)")
    return parser


def run(args: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    """Run the parsed command against ``client``; the exit status."""
    if args.command == "status":
        return show_status(client, args.json, out)
    if args.command == "user":
        return show_user(client, args.user, args.json, out)
    if args.command == "kick":
        return kick(client, args, out)
    if args.command == "drain":
        try:
            answer = client.drain(args.node, args.window)
        except CommandRefused as e:
            if e.status in (404, 405) and not e.error:
                raise AdminError(f"node {args.node} has no drain command") from None
            raise
        window = answer.get("window")
        text = f"{answer.get('node', args.node)} draining over {window}s"
        return _answer(args.json, answer, text, out)
    if args.command == "move":
        answer = client.move(args.node, args.share, args.over)
        text = (
            f"moving {answer['moving']} of {answer['sessions']} sessions off "
            f"{answer['node']} over {answer['over_s']}s"
        )
        return _answer(args.json, answer, text, out)
    body: Any = args.body
    if not args.text:
        try:
            body = json.loads(args.body)
        except ValueError:
            raise AdminError("BODY is not JSON (use --text for a string)") from None
    answer = client.broadcast(body, args.audience, args.sender, args.id)
    again = " (duplicate: stored before)" if answer.get("duplicate") else ""
    return _answer(args.json, answer, f"broadcast {answer['id']} stored{again}", out)


def main(
    argv: Sequence[str] | None = None,
    make_client: Callable[[argparse.Namespace], ControlClient] | None = None,
    out: TextIO | None = None,
) -> int:
    """Entry point; ``make_client`` and ``out`` are for tests."""
    args = build_parser().parse_args(argv)
    client = (
        make_client(args)
        if make_client is not None
        else ControlClient(args.control, args.token, timeout=args.timeout)
    )
    try:
        return run(args, client, out or sys.stdout)
    except AdminError as e:
        print(f"wsha-admin: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
