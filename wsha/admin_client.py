"""The admin CLI's side of the control APIs: one node's API, and the others
found through its ``/v1/nodes``.

Blocking (``urllib``): this is a command-line tool, not node code. The HTTP
call itself is a :class:`Transport`, so tests swap in a fake.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote


class Transport(Protocol):
    """Makes one HTTP request and returns (status, decoded JSON body or None).

    :raises OSError: if nothing answered.
    """

    def __call__(
        self,
        method: str,
        url: str,
        body: Any,
        headers: dict[str, str],
        timeout: float,
    ) -> tuple[int, Any]:
        """Send ``body`` (JSON, or no body when None) and read the answer."""


def urllib_transport(
    method: str, url: str, body: Any, headers: dict[str, str], timeout: float
) -> tuple[int, Any]:
    """A :class:`Transport` on ``urllib``; a body that is not JSON reads as None."""
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers = {**headers, "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, _json_or_none(response.read())
    except urllib.error.HTTPError as e:
        return e.code, _json_or_none(e.read())
    except urllib.error.URLError as e:
        raise OSError(str(e.reason)) from None


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


class AdminError(Exception):
    """A command that could not be done; the message is for the operator."""


class CommandRefused(AdminError):
    """A control API answered with an error status.

    :param status: the HTTP status.
    :param error: the API's error code (``not_found``...), or "" if none.
    """

    def __init__(self, url: str, status: int, error: str, message: str):
        super().__init__(f"{url}: {status} {error or 'error'}: {message}")
        self.status = status
        self.error = error


class ControlClient:
    """Calls the control APIs of a cluster, starting from one node.

    :param control_url: the base URL of any node's control API.
    :param token: the control token, sent as a Bearer token (None: none).
    :param transport: makes the HTTP calls.
    :param timeout: seconds to wait for each answer.
    :param sleep: waits between polls (``time.sleep``).
    """

    def __init__(
        self,
        control_url: str,
        token: str | None,
        transport: Transport = urllib_transport,
        timeout: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.control_url = control_url.rstrip("/")
        self._token = token
        self._transport = transport
        self.timeout = timeout
        self._sleep = sleep
        self._clock = clock

    def call(self, method: str, url: str, body: Any = None) -> Any:
        """One request; the JSON answer of a 2xx, else :class:`CommandRefused`.

        :raises AdminError: if nothing answered at ``url``.
        """
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            status, answer = self._transport(method, url, body, headers, self.timeout)
        except OSError as e:
            raise AdminError(f"{url}: no answer ({e})") from None
        if 200 <= status < 300:
            return answer
        if isinstance(answer, dict) and "error" in answer:
            raise CommandRefused(
                url, status, str(answer["error"]), str(answer.get("message", ""))
            )
        raise CommandRefused(url, status, "", "not a control API answer")

    # The cluster

    def nodes(self) -> dict[str, Any]:
        """``GET /v1/nodes``: the registered nodes and those known dead."""
        answer: dict[str, Any] = self.call("GET", f"{self.control_url}/v1/nodes")
        return answer

    def control_url_of(self, node_id: str) -> str:
        """The registered control URL of ``node_id``.

        :raises AdminError: if no such node is registered.
        """
        listed = self.nodes()["nodes"]
        for node in listed:
            if node["id"] == node_id:
                return str(node["control_url"]).rstrip("/")
        known = ", ".join(n["id"] for n in listed) or "none"
        raise AdminError(f"no node {node_id} is registered (registered: {known})")

    def readiness(self, control_url: str) -> bool | None:
        """Whether a node's ``/readyz`` passes; None if it did not answer."""
        try:
            status, _ = self._transport(
                "GET", f"{control_url.rstrip('/')}/readyz", None, {}, self.timeout
            )
        except OSError:
            return None
        return status == 200

    # Users and sessions

    def user(self, user: str) -> dict[str, Any]:
        """``GET /v1/users/{user}``: the user's sessions and where they are."""
        answer: dict[str, Any] = self.call(
            "GET", f"{self.control_url}/v1/users/{quote(user, safe='')}"
        )
        return answer

    def kick(self, user: str, session: str | None) -> dict[str, Any]:
        """``POST /v1/admin/kick``: close the user's (or one session's) connections."""
        body: dict[str, Any] = {"user": user}
        if session is not None:
            body["session"] = session
        answer: dict[str, Any] = self.call(
            "POST", f"{self.control_url}/v1/admin/kick", body
        )
        return answer

    def wait_closed(
        self, user: str, kicked: list[dict[str, Any]], timeout: float
    ) -> list[str]:
        """Wait until each kicked session is no longer online at the epoch it was
        kicked at; returns the sessions still online after ``timeout``."""
        deadline = self._clock() + timeout
        while True:
            sessions = {s["session"]: s for s in self.user(user)["sessions"]}
            left = [
                k["session"]
                for k in kicked
                if (s := sessions.get(k["session"])) is not None
                and s["online"]
                and int(s["epoch"]) <= int(k["epoch"])
            ]
            if not left or self._clock() >= deadline:
                return left
            self._sleep(0.1)

    # Node commands

    def drain(self, node_id: str, window: float | None) -> dict[str, Any]:
        """``POST /v1/admin/drain`` on the node: it moves its clients away and stops."""
        body = {} if window is None else {"window": window}
        url = f"{self.control_url_of(node_id)}/v1/admin/drain"
        answer: dict[str, Any] = self.call("POST", url, body)
        return answer

    def move(self, node_id: str, share: float, over: float) -> dict[str, Any]:
        """``POST /v1/admin/move`` on the node: send ``share`` of its sessions away."""
        url = f"{self.control_url_of(node_id)}/v1/admin/move"
        answer: dict[str, Any] = self.call(
            "POST", url, {"share": share, "over_s": over}
        )
        return answer

    def broadcast(
        self,
        body: Any,
        audience: Any,
        sender: str | None = None,
        client_id: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/broadcast``: store a system broadcast and announce it."""
        command: dict[str, Any] = {"body": body, "audience": audience}
        if sender is not None:
            command["from"] = sender
        if client_id is not None:
            command["id"] = client_id
        answer: dict[str, Any] = self.call(
            "POST", f"{self.control_url}/v1/broadcast", command
        )
        return answer
