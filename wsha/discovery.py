"""The discovery companion: keeps HAProxy's server list in step with the node registry.

``python -m wsha.discovery --redis URL --haproxy-socket PATH [--interval 1]
[--canary LABEL=PERCENT ...]`` reads the node registry from Redis every
interval and, through HAProxy's runtime API (no reload, no connection cut),
puts ready nodes into free slots (they take clients once their ``/readyz``
check passes), drains the slots of draining nodes, frees those of nodes that
stopped or died, and weighs serving nodes by their version label. Every change
is logged as a structured event; a round that finds nothing to change does
nothing. See :mod:`wsha.rotation` for the rules and docs/operations.md.

It is a small program of its own, not part of a node: it runs beside each
HAProxy instance, and it is meant to be the only writer of that backend.
HAProxy calls block, so they run in a thread; Redis is read with the node's
own client (Sentinel URLs included).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import LoopingCall, react
from twisted.internet.threads import deferToThread
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)

from wsha import rotation
from wsha.haproxy import BACKEND, RuntimeAPI, RuntimeAPIError
from wsha.nodes import NodeRecord, NodeStore
from wsha.rotation import Step, WeightPolicy
from wsha.services.redis_service import RedisService

RunBlocking = Callable[..., Deferred[Any]]
"""Runs a blocking function off the reactor thread (``deferToThread``)."""

Outcome = tuple[Step, str, str | None]
"""A step, the slot it ended in (or ""), and the error if it failed."""


def sync_backend(api: RuntimeAPI, wanted: list[rotation.Member]) -> list[Outcome]:
    """Bring one HAProxy backend in line with ``wanted`` (blocking).

    Each step is tried even if an earlier one failed; the outcomes say which
    did what.

    :raises OSError: or RuntimeAPIError if the slots cannot be read.
    """
    outcomes: list[Outcome] = []
    for step in rotation.plan(wanted, api.slots()):
        try:
            slot = rotation.apply(api, step)
        except (OSError, RuntimeAPIError, ValueError) as e:
            outcomes.append((step, "", str(e)))
        else:
            outcomes.append((step, slot.name, None))
    return outcomes


class BackendSync:
    """One round after another: read the registry, correct each HAProxy.

    :param store: the node registry.
    :param balancers: the runtime APIs of the HAProxy instances to keep in step.
    :param policy: weights by version label.
    :param run_blocking: runs the HAProxy calls off the reactor thread.
    """

    log = Logger()

    def __init__(
        self,
        store: NodeStore,
        balancers: Sequence[RuntimeAPI],
        policy: WeightPolicy,
        run_blocking: RunBlocking = deferToThread,
    ):
        self._store = store
        self._balancers = list(balancers)
        self._policy = policy
        self._run_blocking = run_blocking
        self._skipped: dict[str, str] = {}
        self._unreachable: set[str] = set()

    @inlineCallbacks
    def round(self) -> Any:
        """Sync once; logs its own errors (a polled step). Fires with the changes
        made, as (socket, outcome) pairs."""
        try:
            known = yield self._store.known_nodes()
            found = yield self._store.registrations(known)
        except Exception as e:
            self.log.warn(
                "Could not read the node registry ({error}); HAProxy left as is",
                error=str(e),
            )
            return []
        records: list[NodeRecord] = [r for r in found.values() if r is not None]
        if not records:
            # An emptied registry (a Redis restarted without its data, say)
            # must not empty the balancer: the nodes register again within a
            # heartbeat, and HAProxy's checks take out the ones really gone.
            self.log.debug("The node registry is empty; HAProxy left as is")
            return []
        wanted, skipped = rotation.members(records, self._policy)
        self._report_skipped(skipped)

        changes = []
        for api in self._balancers:
            try:
                outcomes = yield self._run_blocking(sync_backend, api, wanted)
            except Exception as e:
                self._report_unreachable(api, str(e))
                continue
            self._report_unreachable(api, None)
            for outcome in outcomes:
                self._report(api, outcome)
                changes.append((api.socket_path, outcome))
        return changes

    def _report(self, api: RuntimeAPI, outcome: Outcome) -> None:
        step, slot, error = outcome
        fields = {
            "haproxy": api.socket_path,
            "action": step.action,
            "node": step.node,
            "server": step.target,
            "slot": slot or step.target,
            "weight": step.weight,
        }
        if error is not None:
            self.log.warn(
                "HAProxy {haproxy}: {action} of {server} (node {node}) failed: {error}",
                error=error,
                **fields,
            )
        elif step.action == rotation.REMOVE:
            self.log.info(
                "HAProxy {haproxy}: removed {address} from {slot}: no node is "
                "registered there any more",
                address=step.address,
                **fields,
            )
        elif step.action == rotation.WEIGHT:
            self.log.info(
                "HAProxy {haproxy}: node {node} in {slot} now weighs {weight}",
                **fields,
            )
        else:
            self.log.info(
                "HAProxy {haproxy}: {action} node {node} at {server} ({slot})",
                **fields,
            )

    def _report_skipped(self, skipped: dict[str, str]) -> None:
        # Once per node and reason, not every round.
        for node, reason in skipped.items():
            if self._skipped.get(node) != reason:
                self.log.warn(
                    "Node {node} left out of HAProxy: {reason}",
                    node=node,
                    reason=reason,
                )
        self._skipped = skipped

    def _report_unreachable(self, api: RuntimeAPI, error: str | None) -> None:
        path = api.socket_path
        if error is not None and path not in self._unreachable:
            self._unreachable.add(path)
            self.log.warn(
                "HAProxy {haproxy} unreachable ({error}); retrying every round",
                haproxy=path,
                error=error,
            )
        elif error is None and path in self._unreachable:
            self._unreachable.discard(path)
            self.log.info("HAProxy {haproxy} reachable again", haproxy=path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; exits with a usage message if it is wrong."""
    parser = argparse.ArgumentParser(
        prog="python -m wsha.discovery",
        description="Keep HAProxy's wsha backend in step with the node registry.",
    )
    parser.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/0",
        help="the nodes' Redis: redis:// or sentinel:// URL [%(default)s]",
    )
    parser.add_argument(
        "--haproxy-socket",
        action="append",
        required=True,
        metavar="PATH",
        help="HAProxy's admin socket (repeat for several instances)",
    )
    parser.add_argument("--backend", default=BACKEND, help="[%(default)s]")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between rounds [1]"
    )
    parser.add_argument(
        "--canary",
        action="append",
        default=[],
        metavar="LABEL=PERCENT",
        help="give nodes with this version label that share of new connections "
        "(repeatable; other labels share the rest)",
    )
    parser.add_argument("--once", action="store_true", help="one round, then exit")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="[text]"
    )
    parser.add_argument("--debug", action="store_true", help="log debug events too")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    try:
        args.policy = WeightPolicy.parse(args.canary)
    except ValueError as e:
        parser.error(f"--canary: {e}")
    return args


@inlineCallbacks
def run(reactor: Any, args: argparse.Namespace) -> Any:
    """Connect to Redis, then sync every interval until the process is stopped."""
    redis = RedisService.for_url(args.redis, reactor)
    yield redis.startService()
    sync = BackendSync(
        NodeStore(redis),
        [RuntimeAPI(path, args.backend) for path in args.haproxy_socket],
        args.policy,
    )
    log = Logger()
    log.info(
        "Discovery: registry in {redis}, HAProxy at {haproxy}, backend {backend}, "
        "canary shares {shares}",
        redis=redis.target.describe(),
        haproxy=args.haproxy_socket,
        backend=args.backend,
        shares=args.policy.shares,
    )
    if args.once:
        yield sync.round()
        yield redis.stopService()
        return

    loop = LoopingCall(sync.round)
    loop.clock = reactor
    done = loop.start(args.interval)
    done.addErrback(lambda reason: log.failure("Discovery loop died", reason))

    def stop() -> Deferred[Any]:
        # A round in flight finishes before Redis is closed under it.
        log.info("Discovery stopping")
        if loop.running:
            loop.stop()
        return done.addBoth(lambda _: maybeDeferred(redis.stopService))

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    # Runs until SIGTERM or SIGINT stops the reactor.
    yield Deferred()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: parse the options, start logging, run the loop."""
    args = parse_args(argv)
    # Each event reaches a pipe or a file as it happens, not when a buffer fills.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    observer = (
        jsonFileLogObserver(sys.stdout)
        if args.log_format == "json"
        else textFileLogObserver(sys.stdout)
    )
    level = LogLevel.debug if args.debug else LogLevel.info
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(observer, [predicate])], redirectStandardIO=False
    )
    react(run, (args,))


if __name__ == "__main__":
    # Run the imported module's main, so that log namespaces read wsha.discovery.
    from wsha.discovery import main as discovery_main

    discovery_main()
