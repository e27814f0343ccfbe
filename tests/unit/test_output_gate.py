"""Unit tests for :class:`wsha.output_gate.OutputGate`: pausing, limits, 4008."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.market_fakes import PacedLink
from wsha import wire
from wsha.output_gate import OutputGate, OutputLimits

TOO_SLOW = (wire.CLOSE_TOO_SLOW, "client too slow")


def frame(size: int) -> bytes:
    """A JSON frame of exactly ``size`` bytes."""
    return b'{"p":"' + b"x" * (size - 8) + b'"}'


class OutputGateTests(SynchronousTestCase):
    """The gate follows the transport's pauses and gives up on slow clients."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.link = PacedLink(buffer_size=100)
        self.gate = OutputGate(
            self.link, self.clock, OutputLimits(10.0, 1000), "alice/phone"
        )
        self.gate.start()

    def fill(self) -> None:
        """Write past the transport's buffer size, which pauses the gate."""
        self.gate.send_frame(frame(150))
        self.assertTrue(self.gate.paused)

    def test_registers_as_the_transports_producer(self) -> None:
        """start() registers the gate, so the transport paces it."""
        self.assertIs(self.link.producer, self.gate)

    def test_writable_follows_pause_and_resume(self) -> None:
        """Paused by a full buffer, writable again once the client read it."""
        self.assertTrue(self.gate.writable)
        self.fill()
        self.assertFalse(self.gate.writable)
        self.link.drain()
        self.assertTrue(self.gate.writable)

    def test_resume_runs_the_hooks(self) -> None:
        """Every resume hook runs when the output drains."""
        calls: list[str] = []
        self.gate.on_resume(lambda: calls.append("a"))
        self.gate.on_resume(lambda: calls.append("b"))
        self.fill()
        self.link.drain()
        self.assertEqual(calls, ["a", "b"])

    def test_a_hook_that_fills_the_buffer_lets_the_others_go_first_next(self) -> None:
        """A hook that pauses the output again stops the round; the hooks it
        kept waiting run first at the next resume."""
        calls: list[str] = []
        self.gate.on_resume(lambda: (calls.append("fill"), self.fill()))
        self.gate.on_resume(lambda: calls.append("other"))
        self.fill()
        self.link.drain()
        self.assertEqual(calls, ["fill"])
        self.link.drain()
        self.assertEqual(calls, ["fill", "other", "fill"])

    def test_a_failing_hook_is_logged_and_the_rest_run(self) -> None:
        """An exception in one hook does not keep the next from running."""
        calls: list[str] = []

        def broken() -> None:
            raise RuntimeError("hook broke")

        self.gate.on_resume(broken)
        self.gate.on_resume(lambda: calls.append("ok"))
        self.fill()
        self.link.drain()
        self.assertEqual(calls, ["ok"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_paused_past_the_timeout_closes_with_4008(self) -> None:
        """A connection paused for slow_client_timeout is closed: 4008."""
        self.fill()
        self.clock.advance(9.9)
        self.assertEqual(self.link.closes, [])
        self.clock.advance(0.1)
        self.assertEqual(self.link.closes, [TOO_SLOW])
        self.assertTrue(self.gate.closed)

    def test_repeated_pauses_do_not_restart_the_timeout(self) -> None:
        """Twisted pauses on every write while full; the clock runs from the first."""
        self.fill()
        self.clock.advance(6)
        self.gate.send_frame(frame(20))
        self.clock.advance(4)
        self.assertEqual(self.link.closes, [TOO_SLOW])

    def test_resume_before_the_timeout_keeps_the_connection(self) -> None:
        """A client that catches up in time is not closed, and the clock is reset."""
        self.fill()
        self.clock.advance(9)
        self.link.drain()
        self.clock.advance(9)
        self.fill()
        self.clock.advance(9)
        self.assertEqual(self.link.closes, [])

    def test_bytes_written_while_paused_are_capped(self) -> None:
        """Past max_output_bytes written while paused: 4008 at once, and that
        frame and every later one are not written."""
        self.fill()
        for _ in range(9):
            self.gate.send_frame(frame(100))
        self.assertEqual(self.link.closes, [])
        written = len(self.link.buffered)
        self.gate.send_frame(frame(101))
        self.assertEqual(self.link.closes, [TOO_SLOW])
        self.gate.send_frame(frame(10))
        self.assertEqual(len(self.link.buffered), written)

    def test_the_byte_count_starts_again_at_each_pause(self) -> None:
        """Bytes written during an earlier pause do not count against a later one."""
        self.fill()
        for _ in range(9):
            self.gate.send_frame(frame(100))
        self.link.drain()
        self.fill()
        for _ in range(9):
            self.gate.send_frame(frame(100))
        self.assertEqual(self.link.closes, [])

    def test_nothing_is_written_after_close(self) -> None:
        """Once the gate closed the connection (any code), frames are dropped."""
        self.gate.close(wire.CLOSE_TAKEN_OVER, "session taken over")
        self.gate.send_frame(frame(10))
        self.assertEqual(self.link.buffered, [])
        self.assertFalse(self.gate.writable)

    def test_connection_lost_leaves_no_timer(self) -> None:
        """stopProducing (the transport closing) cancels the pending timeout."""
        self.fill()
        self.gate.stopProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.link.drain()
        self.assertFalse(self.gate.writable)
