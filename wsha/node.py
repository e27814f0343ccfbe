"""GatewayNode: the root service of one node, started and stopped in order."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import ILogObserver, Logger

from wsha import logs, metrics
from wsha.admission import AdmissionGate
from wsha.auth import TokenVerifier
from wsha.broadcast.control import BroadcastCommand
from wsha.broadcast.feed import BroadcastFeed
from wsha.broadcast.sender import Broadcaster
from wsha.broadcast.store import BroadcastStore
from wsha.config import NodeConfig
from wsha.control import control_site
from wsha.control_admin import admin_commands
from wsha.control_groups import GroupCommands
from wsha.control_market import InstrumentTicks
from wsha.drain import DrainTiming, NodeDrain
from wsha.drain_control import DrainCommand
from wsha.gateway import Gateway
from wsha.groups import GroupLimits, GroupStore
from wsha.inbox import Durability, InboxLimits, InboxStore
from wsha.market import InstrumentStore
from wsha.market_session import MarketData
from wsha.nodes import DRAINING, READY, NodeStore
from wsha.output_gate import OutputLimits
from wsha.protocols.websocket import WS_PATH, GatewayServerFactory
from wsha.reaper import DeadNodeReaper
from wsha.services.consistency import ConsistencyChecker
from wsha.services.group_fanout import GroupFanout
from wsha.services.inbox_sweeper import InboxSweeper
from wsha.services.kafka_bus import NodeBus
from wsha.services.listener import ListenerService
from wsha.services.market_feed import MarketFeed, feed_link_settings
from wsha.services.node_registry import NodeRegistryService, RegistryTiming
from wsha.services.ordered import OrderedMultiService
from wsha.services.redis_link import LinkSettings
from wsha.services.redis_service import RedisService
from wsha.session_groups import GroupHub
from wsha.session_mover import SessionMover
from wsha.sessions import SessionRegistry
from wsha.wire import CLOSE_RESTARTING


class GatewayNode(OrderedMultiService):
    """One gateway node: Redis, Kafka, the node registry, the control API, the listener.

    Each child starts once the one before it is ready, so no client is accepted
    before the node can serve it; they stop in the reverse order.

    :param config: the node's settings (checked here).
    :param reactor: the reactor (passed in, never imported at module level).
    """

    log = Logger()

    def __init__(self, config: NodeConfig, reactor: Any):
        super().__init__()
        config.check()
        self._reactor = reactor
        self.config = config
        self.node_id = config.node_id

        self.redis = RedisService.for_url(
            config.redis,
            reactor,
            timeout=config.redis_timeout,
            health_interval=config.redis_health_interval,
            reconnect_max=config.redis_reconnect_max,
        )
        self.redis.setName("redis")
        self.redis.setServiceParent(self)

        self.bus = NodeBus(
            reactor,
            config.kafka,
            config.node_id,
            self._on_notice,
            broadcast_topic=config.broadcast_topic,
            on_broadcast=self._on_broadcast,
        )
        self.bus.setName("kafka")
        self.bus.setServiceParent(self)

        sessions = SessionRegistry(
            self.redis,
            config.session_ttl,
            node_id=config.node_id,
            max_sessions=config.max_sessions_per_user,
        )
        reaper = DeadNodeReaper(
            config.node_id,
            NodeStore(self.redis),
            sessions,
            self.bus,
            reactor,
            config.dead_topic_delay,
        )
        self.registry = NodeRegistryService(
            reactor,
            reaper.store,
            reaper,
            config.node_id,
            self._describe,
            RegistryTiming(
                config.heartbeat_interval, config.heartbeat_ttl, config.reaper_interval
            ),
            self._on_reaped,
            version=config.version_label,
        )
        self.registry.setName("node-registry")
        self.registry.setServiceParent(self)

        durability = Durability(config.redis_min_replicas, config.redis_replica_wait_ms)
        self.fanout = GroupFanout(
            self.redis.target,
            LinkSettings(config.redis_timeout, config.redis_reconnect_max),
        )
        self.fanout.setName("group-fanout")
        self.fanout.setServiceParent(self)
        groups = GroupHub(
            GroupStore(
                self.redis,
                GroupLimits(
                    config.group_history_length,
                    config.group_history_ttl,
                    config.dedupe_ttl,
                ),
                config.session_ttl,
                durability,
            ),
            self.fanout,
            reaper.liveness,
            config.max_groups_per_session,
        )
        reaper.on_orphaned = groups.store.leave_all

        self.gateway = Gateway(
            config.node_id,
            InboxStore(
                self.redis,
                InboxLimits(
                    config.inbox_max_length, config.inbox_ttl, config.dedupe_ttl
                ),
                durability,
            ),
            sessions,
            self.bus,
            reactor,
            max_body_bytes=config.max_body_bytes,
            live_nodes=reaper.liveness,
            groups=groups,
        )

        self.checker = ConsistencyChecker(
            reactor,
            config.node_id,
            self.redis,
            reaper.store,
            groups.store,
            sessions,
            self.fanout,
            reaper.liveness.is_live,
            config.consistency_interval,
        )
        self.checker.setName("consistency")
        self.checker.setServiceParent(self)

        broadcast_store = BroadcastStore(
            self.redis,
            config.broadcast_topic,
            config.broadcast_history_length,
            config.dedupe_ttl,
            config.session_ttl,
            durability,
        )
        self.broadcasts = BroadcastFeed(broadcast_store, config.node_id, reactor)
        self.broadcasts.setName("broadcast-feed")
        self.broadcasts.setServiceParent(self)
        self.gateway.broadcasts = self.broadcasts
        broadcaster = Broadcaster(broadcast_store, self.bus, self.broadcasts, reactor)

        self.sweeper = InboxSweeper(
            reactor,
            self._sweep,
            config.inbox_sweep_interval,
            config.kafka_fallback_interval,
        )
        self.sweeper.setName("inbox-sweeper")
        self.sweeper.setServiceParent(self)
        self.redis.on_change(self._on_redis_change)
        self.bus.on_health_change = self.sweeper.set_kafka_healthy

        instruments = InstrumentStore(
            self.redis, config.instrument_max_length, config.max_body_bytes
        )
        self.market_feed = MarketFeed(
            self.redis.target,
            reactor,
            feed_link_settings(config.redis_timeout, config.redis_reconnect_max),
            commands=self.redis,
            max_value_bytes=config.max_body_bytes,
        )
        self.market_feed.setName("market-feed")
        self.market_feed.setServiceParent(self)
        self.gateway.market = MarketData(instruments, self.market_feed)
        self.gateway.output_limits = OutputLimits(
            config.slow_client_timeout, config.max_output_bytes
        )

        self.mover = SessionMover(self.gateway, reactor)
        # Built before the control API, which serves its command; added as
        # the node's last child (below), so that it is the first to stop.
        self.drain = NodeDrain(
            reactor,
            config.node_id,
            self.gateway,
            self.bus,
            DrainTiming(
                config.drain_grace,
                config.drain_window,
                config.drain_move_timeout,
                config.drain_timeout,
            ),
            self._publish_draining,
            self._stop_accepting,
            # twistd offers no other way for a service to end the process; a
            # requested drain ends it through the same path as SIGTERM.
            reactor.stop,
            open_connections=lambda: self.websocket_factory.connections,
        )

        admin = admin_commands(self.gateway, self.mover, config.control_token or None)
        admin.putChild(b"drain", DrainCommand(self.drain, config.control_token or None))
        site = control_site(
            self.gateway,
            self.readiness,
            config.control_token or None,
            nodes=self.registry.listing,
            commands={
                b"broadcast": BroadcastCommand(
                    broadcaster, config.control_token or None, config.max_body_bytes
                ),
                b"admin": admin,
                b"groups": GroupCommands(self.gateway, config.control_token or None),
                b"instruments": InstrumentTicks(
                    instruments, config.max_body_bytes, config.control_token or None
                ),
            },
        )
        self.control = ListenerService(reactor, config.control_port, site)
        self.control.setName("control")
        self.control.setServiceParent(self)

        self.websocket_factory = GatewayServerFactory(
            self.gateway,
            TokenVerifier(
                config.jwt_secret,
                tuple(config.jwt_algorithms.split(",")),
                audience=config.jwt_audience or None,
            ),
            max_message_bytes=config.max_message_bytes,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            admission=AdmissionGate(config.accept_rate, config.accept_burst, reactor),
            store_available=lambda: self.redis.available,
        )
        self.websocket = ListenerService(reactor, config.port, self.websocket_factory)
        self.websocket.setName("websocket")
        self.websocket.setServiceParent(self)

        self.drain.setName("drain")
        self.drain.setServiceParent(self)

        metrics.watch_node(
            config.node_id,
            lambda: self.registry.state,
            self.gateway.connection_count,
            lambda: self.redis.available,
            lambda: self.bus.healthy,
        )
        # Set by the twistd plugin or .tac for --log-format json.
        self.log_observer: ILogObserver | None = None

    def setServiceParent(self, parent: Any) -> Any:
        """Join ``parent``; a twistd application also gets :attr:`log_observer`."""
        logs.install(parent, self.log_observer)
        return super().setServiceParent(parent)

    def _on_notice(self, raw: bytes) -> None:
        self.gateway.on_notice(raw)

    def _on_broadcast(self, raw: bytes) -> None:
        self.broadcasts.on_record(raw)

    def _sweep(self) -> None:
        # Inboxes and the broadcast history are both read on the sweep's timer
        # (fast while Kafka is unreachable), whatever notices were lost.
        self.gateway.poke_all()
        self.broadcasts.catch_up()

    def _describe(self) -> tuple[str, str, int]:
        return (
            self.config.public_url or self.websocket.url("ws", WS_PATH),
            self.config.control_url or self.control.url("http"),
            self.gateway.connection_count(),
        )

    def _on_reaped(self) -> None:
        self.gateway.close_local_sessions(CLOSE_RESTARTING, "node declared dead")

    def _publish_draining(self) -> None:
        self.registry.state = DRAINING
        # The heartbeat logs its own errors; the drain does not wait for it.
        self.registry.beat()

    def _stop_accepting(self) -> None:
        self.websocket_factory.accepting = False

    def _on_redis_change(self, available: bool) -> None:
        if available:
            self.gateway.store_recovered()
            self.broadcasts.catch_up()

    @inlineCallbacks
    def startService(self) -> Any:
        """Start every child in order, then say where the node serves.

        A node that cannot start (its port taken, say) stops its process
        instead of running on, healthy-looking but serving no one.
        """
        try:
            yield super().startService()
        except Exception:
            self.log.failure("Node {node} could not start; stopping", node=self.node_id)
            # The one place outside the entry point that stops the reactor:
            # twistd offers no other way for a service to end the process.
            self._reactor.stop()
            return
        # Asked to drain while it was starting: it stays draining.
        self.registry.state = DRAINING if self.drain.draining else READY
        yield self.registry.beat()
        assert self.websocket.port is not None and self.control.port is not None
        self.log.info(
            "Node {node} ready: WebSocket on {websocket}, control on {control}",
            node=self.node_id,
            websocket=str(self.websocket.port.getHost()),
            control=str(self.control.port.getHost()),
        )

    @inlineCallbacks
    def readiness(self) -> Any:
        """Fire with (ready, details): the node listens, Redis answers, and it
        is not draining (a draining node answers at once, without asking Redis)."""
        if self.drain.draining:
            return False, {"node": self.node_id, "draining": True}
        redis_ok = yield self.redis.is_healthy()
        started = self.websocket.port is not None
        details = {
            "node": self.node_id,
            "redis": redis_ok,
            # Not a readiness condition: without Kafka the node still serves,
            # pulling inboxes on the sweeper's fallback timer.
            "kafka": self.bus.healthy,
            "listening": started,
            "draining": False,
        }
        return bool(redis_ok and started), details
