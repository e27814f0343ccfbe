"""The control API's market data command: publish a tick to an instrument.

Documented in docs/control-api.md.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from wsha import metrics, wire
from wsha.control import Guarded, error_response, read_command, respond_later
from wsha.market import InstrumentStore, is_json_value


class InstrumentTicks(Guarded):
    """``POST /v1/instruments/{instrument}/ticks``: publish a market data tick.

    The instrument may contain ``/``, as is or percent-encoded (``%2F``).

    :param store: the instruments' streams.
    :param max_value_bytes: the largest value accepted, as JSON.
    """

    isLeaf = True

    def __init__(self, store: InstrumentStore, max_value_bytes: int, token: str | None):
        super().__init__(token)
        self._store = store
        self._max_value_bytes = max_value_bytes

    def render_POST(self, request: IRequest) -> Any:
        """Append ``{"value": ...}`` to the instrument's stream; answer with its id."""
        segments = [part.decode("utf-8", "replace") for part in request.postpath]
        if len(segments) < 2 or segments[-1] != "ticks":
            return error_response(request, 404, "not_found", "no such resource")
        instrument = "/".join(segments[:-1])
        if not wire.is_valid_name(instrument):
            return error_response(
                request, 400, "bad_instrument", "not a valid instrument name"
            )
        command = read_command(request)
        if isinstance(command, bytes):
            return command
        if "value" not in command:
            return error_response(
                request, 400, "bad_frame", 'body must be {"value": ...}'
            )
        value_json = wire.encode_body(command["value"])
        if not is_json_value(value_json):
            return error_response(
                request, 400, "bad_json", "NaN and Infinity are not JSON"
            )
        if len(value_json.encode()) > self._max_value_bytes:
            return error_response(
                request, 413, "body_too_big", "value over the size limit"
            )

        def published(entry_id: str) -> tuple[int, dict[str, Any]]:
            metrics.stored(metrics.MARKET, metrics.FROM_CONTROL, False)
            return 200, {"instrument": instrument, "id": entry_id}

        work = self._store.publish(instrument, value_json)
        return respond_later(request, work.addCallback(published))
