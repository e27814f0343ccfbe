"""Every Redis key wsha uses, defined in one place (documented in docs/redis.md).

All keys of one user share the hash tag ``{u:<user>}`` so that every atomic
step on a user touches one slot and runs unchanged on Redis Cluster. Node-level
keys use the tag ``{n:<node>}`` and never mix with user keys in one script.
"""

PREFIX = "wsha"


def _user_tag(user: str) -> str:
    return f"{PREFIX}:{{u:{user}}}"


def inbox(user: str) -> str:
    """The user's inbox: a bounded, expiring Redis Stream of messages."""
    return f"{_user_tag(user)}:inbox"


def dedupe(user: str, sender: str, client_id: str) -> str:
    """Marks that ``sender``'s message ``client_id`` is already in ``user``'s inbox.

    Its value is the inbox id the message was stored under, so a retried send
    is answered with the original id.
    """
    return f"{_user_tag(user)}:dedupe:{sender}:{client_id}"


def session(user: str, session_id: str) -> str:
    """A hash with one session's owner node, fencing epoch and ack cursor."""
    return f"{_user_tag(user)}:session:{session_id}"


def sessions(user: str) -> str:
    """The set of the user's known session ids, online or not."""
    return f"{_user_tag(user)}:sessions"


def online(user: str) -> str:
    """A hash of the user's online sessions: session id to owning node id."""
    return f"{_user_tag(user)}:online"
