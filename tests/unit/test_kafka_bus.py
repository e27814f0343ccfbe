"""NodeBus's view of Kafka's health, and the bounded waits around its threads."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wsha.services.kafka_bus import NodeBus, within


class HealthTests(SynchronousTestCase):
    """Outage errors flip the bus unhealthy once; other errors only get logged."""

    def setUp(self) -> None:
        self.bus = NodeBus(Clock(), "127.0.0.1:1", "n1", lambda raw: None)
        self.changes: list[bool] = []
        self.bus.on_health_change = self.changes.append

    def test_all_brokers_down_makes_the_bus_unhealthy_once(self) -> None:
        """Repeated outage errors report one change, not one per error."""
        self.bus._set_healthy(True)
        for _ in range(3):
            self.bus._kafka_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
        self.assertEqual(self.changes, [True, False])
        self.assertFalse(self.bus.healthy)

    def test_transport_error_counts_as_an_outage(self) -> None:
        """A broken connection to the broker is an outage too."""
        self.bus._set_healthy(True)
        self.bus._kafka_error(KafkaError(KafkaError._TRANSPORT))
        self.assertEqual(self.changes, [True, False])

    def test_other_errors_leave_health_alone(self) -> None:
        """A message-level error does not switch the node to polling."""
        self.bus._set_healthy(True)
        self.bus._kafka_error(KafkaError(KafkaError._MSG_TIMED_OUT))
        self.assertEqual(self.changes, [True])
        self.assertTrue(self.bus.healthy)

    def test_a_bus_starts_unhealthy(self) -> None:
        """Until it has attached to its topic, the bus does not claim health."""
        self.assertFalse(self.bus.healthy)

    def test_send_before_start_is_dropped_not_raised(self) -> None:
        """A notice before the producer exists is dropped (the inbox has it)."""
        self.bus.send("n2", b"{}")


class WithinTests(SynchronousTestCase):
    """``within`` bounds a wait without cancelling the work behind it."""

    def test_result_in_time_passes_through(self) -> None:
        """A result before the deadline is the waiter's result."""
        clock = Clock()
        work: Deferred[Any] = Deferred()
        waiter = within(work, 5.0, clock)
        work.callback("done")
        self.assertEqual(self.successResultOf(waiter), "done")

    def test_late_result_times_out_and_leaves_the_work_alone(self) -> None:
        """After the deadline the waiter fails; the work may still finish later."""
        clock = Clock()
        work: Deferred[Any] = Deferred()
        waiter = within(work, 5.0, clock)
        clock.advance(5.0)
        self.failureResultOf(waiter, DeferredTimeout)
        work.callback("late")
        self.assertEqual(clock.getDelayedCalls(), [])


class BroadcastTopicTests(SynchronousTestCase):
    """The broadcast topic is read beside the node's own and handed over apart."""

    def test_records_go_to_the_handler_of_their_topic(self) -> None:
        """Notices go to on_notice, broadcast records to on_broadcast."""
        notices: list[bytes] = []
        broadcasts: list[bytes] = []
        bus = NodeBus(
            Clock(),
            "127.0.0.1:1",
            "n1",
            notices.append,
            broadcast_topic="wsha.broadcast.t",
            on_broadcast=broadcasts.append,
        )
        batch = [("wsha.node.n1", b"notice"), ("wsha.broadcast.t", b"record")]

        def one_poll(f: Any, *args: Any) -> Deferred[Any]:
            bus._running = False
            return succeed(batch)

        bus._in_thread = one_poll  # type: ignore[method-assign]
        bus._running = True
        self.successResultOf(bus._poll_loop())

        self.assertEqual((notices, broadcasts), ([b"notice"], [b"record"]))

    def test_publish_before_start_is_dropped_not_raised(self) -> None:
        """A broadcast record before the producer exists is dropped (the history
        has the broadcast)."""
        bus = NodeBus(
            Clock(), "127.0.0.1:1", "n1", lambda raw: None, broadcast_topic="wsha.b"
        )
        bus.publish_broadcast(b"{}")


class FlushTests(SynchronousTestCase):
    """The drain's flush of the producer: in the bus's threads, and bounded."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.bus = NodeBus(self.clock, "127.0.0.1:1", "n1", lambda raw: None)
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []
        self.answer: Deferred[Any] = Deferred()

        def in_thread(f: Any, *args: Any) -> Deferred[Any]:
            self.calls.append((f, args))
            return self.answer

        self.bus._in_thread = in_thread  # type: ignore[method-assign]

    def test_flush_runs_in_the_pool_and_reports_unsent(self) -> None:
        """The flush goes to the bus's threads with its timeout and fires with
        how many records are left."""
        producer = _Producer()
        self.bus._producer = producer  # type: ignore[assignment]
        d = self.bus.flush(2.0)
        self.assertEqual(self.calls, [(producer.flush, (2.0,))])
        self.answer.callback(3)
        self.assertEqual(self.successResultOf(d), 3)

    def test_stuck_flush_times_out(self) -> None:
        """A flush that does not return a second past its timeout fails the
        wait (the thread is left to finish or die with the process)."""
        self.bus._producer = _Producer()  # type: ignore[assignment]
        d = self.bus.flush(2.0)
        self.clock.advance(3.0)
        self.failureResultOf(d, DeferredTimeout)

    def test_no_producer_has_nothing_to_flush(self) -> None:
        """Before the bus started there is nothing queued."""
        self.assertEqual(self.successResultOf(self.bus.flush(1.0)), 0)


class _Producer:
    """The producer's flush, as the pool would call it."""

    def flush(self, timeout: float) -> int:
        """Pretend everything was sent."""
        return 0
