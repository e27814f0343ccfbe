"""Unit tests for the client's market data: watching, resuming and dropping repeats."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_client import FakeLink, HighestRng
from wsha.client import GatewayClient
from wsha.client_market import WatchRefused


class ClientMarketTests(SynchronousTestCase):
    """GatewayClient.watch over a fake link."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.ticks: list[dict[str, Any]] = []
        self.client = GatewayClient(
            self.reactor,
            "ws://127.0.0.1:8080/ws",
            "tok",
            "phone",
            lambda m: None,
            rng=HighestRng(),
        )
        self.client.on_tick = self.ticks.append
        self.client.start()

    def connect(self) -> FakeLink:
        """Open a link and welcome the client on it."""
        link = FakeLink()
        self.client._opened(link)
        self.client._frame(link, {"type": "welcome", "epoch": 1})
        return link

    def tick(self, link: FakeLink, instrument: str, entry_id: str) -> None:
        """The gateway sends a tick."""
        self.client._frame(
            link,
            {
                "type": "tick",
                "instrument": instrument,
                "id": entry_id,
                "value": 1,
                "snapshot": False,
            },
        )

    def subscribes(self, link: FakeLink) -> list[dict[str, Any]]:
        """The subscribe frames written on ``link``."""
        return [f for f in link.sent if f["type"] == "subscribe"]

    def test_watch_subscribes_and_fires_on_subscribed(self) -> None:
        """watch() sends subscribe (with after when given); the Deferred fires
        with the subscribed frame."""
        link = self.connect()
        d = self.client.watch("EURUSD", after="5-0")
        (frame,) = self.subscribes(link)
        self.assertEqual((frame["instrument"], frame["after"]), ("EURUSD", "5-0"))
        self.assertNoResult(d)
        answer = {"type": "subscribed", "id": frame["id"], "instrument": "EURUSD"}
        self.client._frame(link, answer)
        self.assertEqual(self.successResultOf(d), answer)

    def test_watch_before_connecting_subscribes_on_welcome(self) -> None:
        """Instruments watched while offline are subscribed once welcomed."""
        self.client.watch("EURUSD")
        link = self.connect()
        self.assertEqual([f["instrument"] for f in self.subscribes(link)], ["EURUSD"])
        self.assertNotIn("after", self.subscribes(link)[0])

    def test_reconnect_resumes_after_the_last_tick(self) -> None:
        """After a reconnect each instrument is subscribed again with ``after``
        = the last tick id seen."""
        link = self.connect()
        self.client.watch("EURUSD")
        self.client.watch("GBPUSD")
        self.tick(link, "EURUSD", "7-0")
        self.tick(link, "EURUSD", "8-0")
        self.client._closed(link, 1006, None)

        again = self.connect()
        sent = {f["instrument"]: f.get("after") for f in self.subscribes(again)}
        self.assertEqual(sent, {"EURUSD": "8-0", "GBPUSD": None})

    def test_repeated_or_older_ticks_are_dropped(self) -> None:
        """A tick at or below the last id of its instrument is not handed on."""
        link = self.connect()
        self.client.watch("A")
        self.client.watch("B")
        for instrument, entry_id in (
            ("A", "9-0"),
            ("A", "9-0"),
            ("A", "10-0"),
            ("A", "2-0"),
            ("B", "1-0"),
        ):
            self.tick(link, instrument, entry_id)
        self.assertEqual(
            [(t["instrument"], t["id"]) for t in self.ticks],
            [("A", "9-0"), ("A", "10-0"), ("B", "1-0")],
        )

    def test_unwatch_stops_ticks(self) -> None:
        """After unwatch: unsubscribe is sent, ticks still arriving are dropped,
        and a reconnect does not subscribe again."""
        link = self.connect()
        d = self.client.watch("A")
        self.client.unwatch("A")
        self.failureResultOf(d, CancelledError)
        self.assertEqual(link.sent[-1], {"type": "unsubscribe", "instrument": "A"})
        self.tick(link, "A", "1-0")
        self.assertEqual(self.ticks, [])
        self.client._closed(link, 1006, None)
        self.assertEqual(self.subscribes(self.connect()), [])

    def test_retryable_refusal_is_retried(self) -> None:
        """unavailable (retry true) subscribes again after a delay."""
        link = self.connect()
        self.client.watch("A")
        frame_id = self.subscribes(link)[0]["id"]
        self.client._frame(
            link,
            {"type": "error", "id": frame_id, "code": "unavailable", "retry": True},
        )
        self.assertEqual(len(self.subscribes(link)), 1)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.subscribes(link)), 2)

    def test_final_refusal_fails_the_watch(self) -> None:
        """A refusal with retry false fails watch() and forgets the instrument."""
        link = self.connect()
        d = self.client.watch("A")
        frame_id = self.subscribes(link)[0]["id"]
        self.client._frame(
            link,
            {
                "type": "error",
                "id": frame_id,
                "code": "too_many_subscriptions",
                "message": "at most 256",
                "retry": False,
            },
        )
        self.assertEqual(
            self.failureResultOf(d, WatchRefused).value.code, "too_many_subscriptions"
        )
        self.assertEqual(self.client.market.last_ids, {})
