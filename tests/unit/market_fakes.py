"""Fakes for the market data unit tests: streams in memory, the feed's Redis
link, and a connection whose transport pauses like Twisted's does.

:class:`FakeStreams` follows Redis's rules for the commands the store uses;
tests/integration/test_market_data.py checks the store on real Redis.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer

from wsha import keys, wire
from wsha.market import Tick
from wsha.services.redis_link import LinkSettings, LinkWatcher
from wsha.services.redis_service import RedisUnavailable

Entry = tuple[str, list[str]]


class FakeStreams:
    """Redis Streams in memory, answering XADD and XREVRANGE like Redis.

    Set ``down`` to make every command fail as an unreachable Redis would.
    """

    def __init__(self) -> None:
        self.streams: dict[str, list[Entry]] = {}
        self.commands: list[tuple[Any, ...]] = []
        self.down = False
        self._ms = 1_000

    def add(self, instrument: str, value: Any, **fields: str) -> str:
        """Append ``value`` (as JSON) to ``instrument``'s stream; return the id.

        ``fields`` replace the entry's fields, to store malformed entries.
        """
        self._ms += 1
        entry_id = f"{self._ms}-0"
        flat = [x for pair in fields.items() for x in pair] or ["v", json.dumps(value)]
        key = keys.instrument_ticks(instrument)
        self.streams.setdefault(key, []).append((entry_id, flat))
        return entry_id

    def trim(self, instrument: str, keep: int) -> None:
        """Drop all but the newest ``keep`` entries, as MAXLEN does."""
        key = keys.instrument_ticks(instrument)
        self.streams[key] = self.streams.get(key, [])[-keep:]

    def ids(self, instrument: str) -> list[str]:
        """The ids in ``instrument``'s stream, oldest first."""
        return [e[0] for e in self.streams.get(keys.instrument_ticks(instrument), [])]

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Run XADD or XREVRANGE."""
        self.commands.append(args)
        if self.down:
            return fail(RedisUnavailable("Redis is down"))
        name = args[0]
        if name == "XADD":
            return succeed(self._xadd(list(args[1:])))
        if name == "XREVRANGE":
            return succeed(self._xrevrange(*args[1:]))
        raise NotImplementedError(name)

    def eval(self, script: str, keys: Any = (), args: Any = ()) -> Deferred[Any]:
        """Not used by the market data code."""
        raise NotImplementedError("eval")

    def _xadd(self, args: list[Any]) -> str:
        key = args.pop(0)
        maxlen = None
        if args[0] == "MAXLEN":
            maxlen = int(args[2])
            args = args[3:]
        assert args[0] == "*"
        self._ms += 1
        entry_id = f"{self._ms}-0"
        self.streams.setdefault(key, []).append((entry_id, [str(a) for a in args[1:]]))
        if maxlen is not None:
            self.streams[key] = self.streams[key][-maxlen:]
        return entry_id

    def _xrevrange(
        self, key: str, end: str, start: str, _count: str = "COUNT", count: int = 0
    ) -> list[Any]:
        assert end == "+"
        low = (0, 0) if start == "-" else wire.stream_id_key(start)
        found = [
            [entry_id, list(fields)]
            for entry_id, fields in reversed(self.streams.get(key, []))
            if wire.stream_id_key(entry_id) >= low
        ]
        return found[:count] if count else found


class FakeFeedConnection:
    """The feed's Redis connection: CLIENT ID answers at once, XREADs wait."""

    def __init__(self, client_id: int = 7) -> None:
        self.client_id = client_id
        self.reads: list[tuple[tuple[Any, ...], Deferred[Any]]] = []

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Answer CLIENT ID; keep XREAD for the test to answer."""
        if args[:2] == ("CLIENT", "ID"):
            return succeed(self.client_id)
        d: Deferred[Any] = Deferred()
        self.reads.append((args, d))
        return d

    def pending(self) -> list[tuple[tuple[Any, ...], Deferred[Any]]]:
        """The reads not answered yet."""
        return [(args, d) for args, d in self.reads if not d.called]

    def streams_of(self, index: int = -1) -> dict[str, str]:
        """The instruments and ids XREAD number ``index`` asked for."""
        args = self.reads[index][0]
        names = list(args[args.index("STREAMS") + 1 :])
        half = len(names) // 2
        prefix, suffix = len("wsha:{i:"), len("}:ticks")
        return {
            key[prefix:-suffix]: after
            for key, after in zip(names[:half], names[half:], strict=True)
        }


class FakeHandler:
    """What a link's ``open`` returns: closed with ``disconnect``."""

    def __init__(self) -> None:
        self.disconnected = False

    def disconnect(self) -> Deferred[None]:
        """Record the close."""
        self.disconnected = True
        return succeed(None)


class FakeTarget:
    """A RedisTarget whose links the test brings up and down by hand."""

    def __init__(self) -> None:
        self.opened: list[tuple[LinkWatcher, LinkSettings]] = []
        self.handler = FakeHandler()

    def describe(self) -> str:
        """A made-up address."""
        return "fake:6379/0"

    def open(self, watcher: LinkWatcher, settings: LinkSettings) -> Any:
        """Record the link; the test calls ``watcher.link_up`` itself."""
        self.opened.append((watcher, settings))
        return self.handler

    def verify(self, connection: Any) -> Deferred[bool]:
        """Always where it should be."""
        return succeed(True)

    def close(self) -> Deferred[Any]:
        """Nothing to release."""
        return succeed(None)


class FakeCommands:
    """The node's command connection, as the feed uses it (CLIENT UNBLOCK)."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Record the command; it succeeds."""
        self.commands.append(args)
        return succeed(1)

    def eval(self, script: str, keys: Any = (), args: Any = ()) -> Deferred[Any]:
        """Not used by the feed."""
        raise NotImplementedError("eval")


class RecordingWatcher:
    """A TickWatcher that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    def on_ticks(self, instrument: str, ticks: Any) -> None:
        """Keep (instrument, id) of each tick."""
        self.got.extend((instrument, tick.id) for tick in ticks)


class FakeFeed:
    """A MarketFeed's watch side that records the calls."""

    def __init__(self) -> None:
        self.watching: dict[tuple[str, Any], str] = {}
        self.calls: list[tuple[str, str, str | None]] = []

    def watch(self, instrument: str, watcher: Any, after: str) -> None:
        """Record the watch and where it starts."""
        self.watching[(instrument, watcher)] = after
        self.calls.append(("watch", instrument, after))

    def unwatch(self, instrument: str, watcher: Any) -> None:
        """Record the unwatch."""
        self.watching.pop((instrument, watcher), None)
        self.calls.append(("unwatch", instrument, None))


class PacedLink:
    """A connection whose transport pauses its producer like Twisted's does.

    Frames count as buffered until :meth:`drain` (the client reads them); past
    ``buffer_size`` buffered bytes the registered producer is paused on every
    write, and it is resumed once a drain empties the buffer.
    """

    def __init__(self, buffer_size: int = 1000) -> None:
        self.buffer_size = buffer_size
        self.buffered: list[bytes] = []
        self.read: list[dict[str, Any]] = []
        self.closes: list[tuple[int, str]] = []
        self.producer: IPushProducer | None = None

    def register_producer(self, producer: IPushProducer) -> None:
        """Pace ``producer`` from now on."""
        self.producer = producer

    def send_frame(self, payload: bytes) -> None:
        """Buffer ``payload``; pause the producer while over the buffer size."""
        self.buffered.append(payload)
        if self.producer is not None and self.buffered_bytes > self.buffer_size:
            self.producer.pauseProducing()

    def close(self, code: int, reason: str) -> None:
        """Keep the close code and reason."""
        self.closes.append((code, reason))

    @property
    def buffered_bytes(self) -> int:
        """Bytes written and not yet read by the client."""
        return sum(len(frame) for frame in self.buffered)

    def drain(self) -> list[dict[str, Any]]:
        """The client reads everything buffered; the producer is resumed.

        Returns what was read by this drain (``read`` keeps all of it).
        """
        frames = [json.loads(frame) for frame in self.buffered]
        self.buffered = []
        self.read.extend(frames)
        if self.producer is not None:
            self.producer.resumeProducing()
        return frames

    def ticks(self) -> list[dict[str, Any]]:
        """The tick frames read so far."""
        return [frame for frame in self.read if frame.get("type") == "tick"]


def tick(instrument: str, entry_id: str, value: Any = 1) -> Tick:
    """A tick of ``instrument`` with id ``entry_id``."""
    return Tick(instrument, entry_id, json.dumps(value))
