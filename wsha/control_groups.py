"""The control API's group commands: ``/v1/groups/{group}[/publish|/subscribe|...]``.

Documented in docs/control-api.md. Subscriptions made here are stored like a
client's own; a session online elsewhere is told through its node's topic to
reload them, and announces them to its client with ``subscribed`` frames.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.web import resource
from twisted.web.iweb import IRequest

from wsha import metrics, wire
from wsha.control import (
    Guarded,
    error_response,
    message_fields,
    read_command,
    respond_later,
    user_and_session,
)
from wsha.gateway import Gateway
from wsha.session_groups import GroupHub, presence_list


class GroupCommands(Guarded):
    """``/v1/groups``: one child per group name.

    :param gateway: the node's gateway (with its group parts).
    :param token: the bearer token commands need.
    """

    def __init__(self, gateway: Gateway, token: str | None):
        super().__init__(token)
        self._gateway = gateway

    def getChild(self, path: bytes, request: IRequest) -> resource.Resource:
        """Serve one group per path segment."""
        return _GroupResource(
            self._gateway, path.decode("utf-8", "replace"), self._token
        )


class _GroupResource(Guarded):
    isLeaf = True

    def __init__(self, gateway: Gateway, group: str, token: str | None):
        super().__init__(token)
        self._gateway = gateway
        self._group = group
        assert gateway.groups is not None
        self._hub: GroupHub = gateway.groups

    def _action(self, request: IRequest) -> str | None:
        rest = [p for p in request.postpath if p]
        if len(rest) > 1:
            return None
        return rest[0].decode("ascii", "replace") if rest else ""

    def render_GET(self, request: IRequest) -> Any:
        """``GET /v1/groups/{group}``: its members, and who of them is online."""
        if self._action(request) != "":
            return error_response(request, 404, "not_found", "no such resource")
        if not wire.is_valid_name(self._group):
            return error_response(request, 400, "bad_group", "not a valid group name")
        return respond_later(request, self._describe())

    def render_POST(self, request: IRequest) -> Any:
        """``POST .../publish``, ``.../subscribe`` or ``.../unsubscribe``."""
        action = self._action(request)
        handler = {
            "publish": self._publish,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
        }.get(action or "")
        if handler is None:
            return error_response(request, 404, "not_found", "no such resource")
        if not wire.is_valid_name(self._group):
            return error_response(request, 400, "bad_group", "not a valid group name")
        command = read_command(request)
        if isinstance(command, bytes):
            return command
        return handler(request, command)

    @inlineCallbacks
    def _describe(self) -> Any:
        members = yield self._hub.store.members(self._group)
        online = yield self._hub.online(self._group)
        listed = []
        for entry in members:
            user, _, session = entry.partition(" ")
            listed.append({"user": user, "session": session})
        return 200, {
            "group": self._group,
            "members": listed,
            "online": presence_list(online),
        }

    def _publish(self, request: IRequest, command: dict[str, Any]) -> Any:
        fields = message_fields(request, command, self._gateway.max_body_bytes)
        if isinstance(fields, bytes):
            return fields
        ts = int(self._gateway.clock.seconds() * 1000)
        work = self._hub.store.publish(
            self._group, fields.sender, fields.client_id, fields.body_json, ts
        )

        def stored(result: Any) -> tuple[int, dict[str, Any]]:
            metrics.stored(metrics.GROUP, metrics.FROM_CONTROL, result.duplicate)
            return 200, {
                "id": fields.client_id,
                "group": self._group,
                "history": result.id,
                "duplicate": result.duplicate,
            }

        return respond_later(request, work.addCallback(stored))

    def _subscribe(self, request: IRequest, command: dict[str, Any]) -> Any:
        target = user_and_session(request, command)
        if isinstance(target, bytes):
            return target
        presence = command.get("presence", False)
        if not isinstance(presence, bool):
            return error_response(
                request, 400, "bad_frame", "'presence' must be true or false"
            )
        return respond_later(request, self._change(*target, presence=presence))

    def _unsubscribe(self, request: IRequest, command: dict[str, Any]) -> Any:
        target = user_and_session(request, command)
        if isinstance(target, bytes):
            return target
        return respond_later(request, self._change(*target, presence=None))

    @inlineCallbacks
    def _change(self, user: str, session: str | None, presence: bool | None) -> Any:
        # presence None: unsubscribe; otherwise subscribe with that flag.
        store = self._hub.store
        known = yield self._gateway.registry.lookup(user)
        sessions = [s for s in known if session is None or s.session == session]
        if session is not None and not sessions:
            return 404, {
                "error": "not_found",
                "message": f"no session {session} of {user}",
                "retry": False,
            }
        for info in sessions:
            if presence is None:
                yield store.unsubscribe(user, info.session, self._group)
                yield store.leave(
                    self._group, user, info.session, "", "", end_membership=True
                )
            else:
                held = yield store.subscriptions(user, info.session)
                if self._group not in held and len(held) >= self._hub.max_groups:
                    return 409, {
                        "error": "too_many_subscriptions",
                        "message": f"session {info.session} is in "
                        f"{len(held)} groups already",
                        "retry": False,
                    }
                joined = yield store.join(self._group, user, info.session, "", "")
                yield store.subscribe(
                    user, info.session, self._group, joined.head, None, presence
                )
            if info.online and info.node:
                self._gateway.notify_subscriptions(info.node, user, info.session)
        return 200, {
            "group": self._group,
            "user": user,
            "subscribed": presence is not None,
            "sessions": [s.session for s in sessions],
        }
