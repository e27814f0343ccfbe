"""The HTTP control API of a node (twisted.web), documented in docs/control-api.md."""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from wsha import metrics, wire
from wsha.gateway import Gateway
from wsha.metrics import MetricsPage
from wsha.services.redis_service import RedisUnavailable

MAX_REQUEST_BYTES = 1024 * 1024


def write_json(request: IRequest, status: int, payload: dict[str, Any]) -> bytes:
    """Set ``status`` and the JSON headers; return ``payload`` encoded."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(payload, separators=(",", ":")).encode()


def error_response(request: IRequest, status: int, code: str, message: str) -> bytes:
    """An error answer: its code, a message, and whether a retry can succeed."""
    return write_json(
        request,
        status,
        {"error": code, "message": message, "retry": wire.ERRORS.get(code, False)},
    )


def read_command(request: IRequest) -> dict[str, Any] | bytes:
    """The request's JSON object, or the error response to return instead."""
    raw = request.content.read(MAX_REQUEST_BYTES + 1)
    if len(raw) > MAX_REQUEST_BYTES:
        return error_response(request, 413, "body_too_big", "request over 1 MiB")
    try:
        command = wire.loads_strict(raw.decode("utf-8"))
    except ValueError:
        return error_response(request, 400, "bad_json", "request body is not JSON")
    if not isinstance(command, dict):
        return error_response(
            request, 400, "bad_frame", "request body must be an object"
        )
    return command


def command_id(command: dict[str, Any]) -> str | None:
    """The command's idempotency ``id`` (a random one if absent); None if invalid.

    Only a missing id gets a random one: 0, "" or null are mistakes, and a
    replaced id would make a retried command a second message.
    """
    client_id = command["id"] if "id" in command else uuid.uuid4().hex
    if (
        not isinstance(client_id, str)
        or not client_id
        or len(client_id) > wire.MAX_ID_LENGTH
    ):
        return None
    return client_id


@dataclass(frozen=True)
class MessageFields:
    """What a command that stores a message names: sender, idempotency id, body."""

    sender: str
    client_id: str
    body_json: str


def message_fields(
    request: IRequest, command: dict[str, Any], max_body_bytes: int
) -> MessageFields | bytes:
    """Check ``from``, ``id`` and ``body`` as every message command does.

    Returns the fields, or the error response to return instead: ``from``
    must be a user id (default ``server``), ``id`` as :func:`command_id`,
    ``body`` present and at most ``max_body_bytes`` as compact JSON.
    """
    sender = command.get("from", "server")
    client_id = command_id(command)
    if not isinstance(sender, str) or not wire.is_valid_user_id(sender):
        return error_response(
            request, 400, "bad_frame", "'from' must be a valid user id"
        )
    if client_id is None:
        return error_response(
            request, 400, "bad_frame", "'id' must be a string of 1-128 chars"
        )
    if "body" not in command:
        return error_response(request, 400, "bad_frame", "'body' is required")
    body_json = wire.encode_body(command["body"])
    if len(body_json.encode()) > max_body_bytes:
        return error_response(request, 413, "body_too_big", "body over the size limit")
    return MessageFields(sender, client_id, body_json)


def user_and_session(
    request: IRequest, command: dict[str, Any]
) -> tuple[str, str | None] | bytes:
    """The command's ``user`` and optional ``session``, or the error to return."""
    user = command.get("user")
    session = command.get("session")
    if not isinstance(user, str) or not wire.is_valid_user_id(user):
        return error_response(
            request, 400, "bad_recipient", "'user' must be a valid user id"
        )
    if session is not None and (
        not isinstance(session, str) or not wire.is_valid_user_id(session)
    ):
        return error_response(
            request, 400, "bad_frame", "'session' must be a valid session id"
        )
    return user, session


def respond_later(request: IRequest, work: Deferred[tuple[int, dict[str, Any]]]) -> Any:
    """Finish ``request`` when ``work`` fires with (status, JSON body)."""
    log = Logger()

    def done(result: tuple[int, dict[str, Any]]) -> None:
        status, payload = result
        if not request._disconnected:  # type: ignore[attr-defined]
            request.write(write_json(request, status, payload))
            request.finish()

    def failed(reason: Any) -> None:
        if reason.check(RedisUnavailable):
            log.debug("Control request {uri}: Redis unavailable", uri=request.uri)
        else:
            log.failure("Control request {uri} failed", reason, uri=request.uri)
        if not request._disconnected:  # type: ignore[attr-defined]
            request.write(
                error_response(request, 503, "unavailable", reason.getErrorMessage())
            )
            request.finish()

    work.addCallbacks(done, failed)
    return server.NOT_DONE_YET


class Guarded(resource.Resource):
    """A resource that, when a control token is set, demands it as a Bearer token."""

    def __init__(self, token: str | None):
        super().__init__()
        self._token = token

    def authorized(self, request: IRequest) -> bool:
        """Say whether the request carries the control token (or none is needed)."""
        if not self._token:
            return True
        header = request.getHeader(b"authorization") or b""
        scheme, _, value = header.strip().partition(b" ")
        # The scheme is case-insensitive (RFC 9110); the token is compared in
        # constant time, so it cannot be guessed from response timings.
        return scheme.lower() == b"bearer" and hmac.compare_digest(
            value.strip(), self._token.encode()
        )

    def render(self, request: IRequest) -> Any:
        """Refuse unauthorized requests before dispatching on the method."""
        if not self.authorized(request):
            return error_response(
                request, 401, "unauthorized", "control token missing or wrong"
            )
        return super().render(request)


class Health(resource.Resource):
    """``GET /healthz``: the process is alive and its reactor turns."""

    isLeaf = True

    def __init__(self, node_id: str):
        super().__init__()
        self._node_id = node_id

    def render_GET(self, request: IRequest) -> bytes:
        """Always 200 while the node runs."""
        return write_json(request, 200, {"status": "ok", "node": self._node_id})


class Readiness(resource.Resource):
    """``GET /readyz``: 200 only while the node should receive new connections.

    :param check: fires with (ready, details) when asked.
    """

    isLeaf = True

    def __init__(self, check: Callable[[], Deferred[tuple[bool, dict[str, Any]]]]):
        super().__init__()
        self._check = check

    def render_GET(self, request: IRequest) -> Any:
        """Run the readiness checks; 503 when any fails."""

        def answer(result: tuple[bool, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
            ready, details = result
            details["ready"] = ready
            return (200 if ready else 503), details

        return respond_later(request, self._check().addCallback(answer))


class SendCommand(Guarded):
    """``POST /v1/send``: store a message for a user, from the server or a sender."""

    isLeaf = True

    def __init__(self, gateway: Gateway, token: str | None):
        super().__init__(token)
        self._gateway = gateway

    def render_POST(self, request: IRequest) -> Any:
        """Validate the JSON body, append to the inbox, answer with the inbox id."""
        command = read_command(request)
        if isinstance(command, bytes):
            return command

        to = command.get("to")
        if not isinstance(to, str) or not wire.is_valid_user_id(to):
            return error_response(
                request, 400, "bad_recipient", "'to' must be a valid user id"
            )
        fields = message_fields(request, command, self._gateway.max_body_bytes)
        if isinstance(fields, bytes):
            return fields

        def stored(result: Any) -> tuple[int, dict[str, Any]]:
            metrics.stored(metrics.DIRECT, metrics.FROM_CONTROL, result.duplicate)
            return 200, {
                "id": fields.client_id,
                "inbox": result.id,
                "duplicate": result.duplicate,
            }

        work = self._gateway.submit(
            fields.sender, to, fields.client_id, fields.body_json
        )
        return respond_later(request, work.addCallback(stored))


class UserLookup(Guarded):
    """``GET /v1/users/{id}``: the user's sessions, where they are and their cursors."""

    def __init__(self, gateway: Gateway, token: str | None):
        super().__init__(token)
        self._gateway = gateway

    def getChild(self, path: bytes, request: IRequest) -> resource.Resource:
        """Serve one user per path segment."""
        return _UserResource(
            self._gateway, path.decode("utf-8", "replace"), self._token
        )


class _UserResource(Guarded):
    isLeaf = True

    def __init__(self, gateway: Gateway, user: str, token: str | None):
        super().__init__(token)
        self._gateway = gateway
        self._user = user

    def render_GET(self, request: IRequest) -> Any:
        if request.postpath and request.postpath != [b""]:
            return error_response(request, 404, "not_found", "no such resource")
        if not wire.is_valid_user_id(self._user):
            return error_response(request, 400, "bad_recipient", "not a valid user id")

        def found(sessions: list[Any]) -> tuple[int, dict[str, Any]]:
            return 200, {
                "user": self._user,
                "online": any(s.online for s in sessions),
                "sessions": [
                    {
                        "session": s.session,
                        "online": s.online,
                        "node": s.node or None,
                        "epoch": int(s.epoch),
                        "cursor": s.cursor,
                        "seen": s.seen,
                    }
                    for s in sessions
                ],
            }

        d = ensureDeferred(self._gateway.registry.lookup(self._user))
        return respond_later(request, d.addCallback(found))


class NodeList(Guarded):
    """``GET /v1/nodes``: the registered nodes with their registrations, and the
    nodes known to be dead.

    :param listing: fires with the JSON object to answer.
    """

    isLeaf = True

    def __init__(
        self, listing: Callable[[], Deferred[dict[str, Any]]], token: str | None
    ):
        super().__init__(token)
        self._listing = listing

    def render_GET(self, request: IRequest) -> Any:
        """Answer with the node registry as it is now."""
        return respond_later(request, self._listing().addCallback(lambda n: (200, n)))


def control_site(
    gateway: Gateway,
    readiness: Callable[[], Deferred[tuple[bool, dict[str, Any]]]],
    token: str | None,
    nodes: Callable[[], Deferred[dict[str, Any]]] | None = None,
    commands: Mapping[bytes, resource.Resource] | None = None,
) -> server.Site:
    """Build the control API's site; ``nodes`` lists the node registry, and
    ``commands`` adds more ``/v1/`` resources by path segment."""
    root = resource.Resource()
    root.putChild(b"healthz", Health(gateway.node_id))
    root.putChild(b"readyz", Readiness(readiness))
    root.putChild(b"metrics", MetricsPage())
    v1 = resource.Resource()
    root.putChild(b"v1", v1)
    v1.putChild(b"send", SendCommand(gateway, token))
    v1.putChild(b"users", UserLookup(gateway, token))
    if nodes is not None:
        v1.putChild(b"nodes", NodeList(nodes, token))
    for name, command in (commands or {}).items():
        v1.putChild(name, command)
    site = server.Site(root)
    site.displayTracebacks = False
    return site
