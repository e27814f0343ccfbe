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
    is answered with the original id. The sender's length comes first because
    both parts may contain ``:``; without it ``a:b`` + ``c`` and ``a`` + ``b:c``
    would share a key and one message would be taken for the other.
    """
    return f"{_user_tag(user)}:dedupe:{len(sender)}:{sender}:{client_id}"


def trimmed(user: str) -> str:
    """The newest inbox id trimmed away by the length limit, if any.

    A resume from an id below it has lost messages (``welcome.truncated``).
    """
    return f"{_user_tag(user)}:trimmed"


def session(user: str, session_id: str) -> str:
    """A hash with one session's owner node, fencing epoch and ack cursor."""
    return f"{_user_tag(user)}:session:{session_id}"


def sessions(user: str) -> str:
    """The set of the user's known session ids, online or not."""
    return f"{_user_tag(user)}:sessions"


def online(user: str) -> str:
    """A hash of the user's online sessions: session id to owning node id."""
    return f"{_user_tag(user)}:online"


def subscriptions(user: str, session_id: str) -> str:
    """A hash of the groups one session is subscribed to: group to acked group id."""
    return f"{_user_tag(user)}:subs:{session_id}"


def presence_subscriptions(user: str, session_id: str) -> str:
    """The set of the session's groups whose join and leave events it receives."""
    return f"{_user_tag(user)}:presence-subs:{session_id}"


def _group_tag(group: str) -> str:
    return f"{PREFIX}:{{g:{group}}}"


def group_history(group: str) -> str:
    """The group's bounded history: a Redis Stream of its messages."""
    return f"{_group_tag(group)}:history"


def group_trimmed(group: str) -> str:
    """The newest group history id trimmed away by the length limit, if any."""
    return f"{_group_tag(group)}:trimmed"


def group_dedupe(group: str, sender: str, client_id: str) -> str:
    """Marks that ``sender``'s publish ``client_id`` is already in the history."""
    return f"{_group_tag(group)}:dedupe:{len(sender)}:{sender}:{client_id}"


def group_members(group: str) -> str:
    """The group's member sessions (``<user> <session>``), online or not."""
    return f"{_group_tag(group)}:members"


def group_presence(group: str) -> str:
    """The group's online members: ``<user> <session>`` to ``<epoch> <node>``."""
    return f"{_group_tag(group)}:presence"


def group_channel(group: str) -> str:
    """The Pub/Sub channel that carries the group's messages and presence events."""
    return f"{_group_tag(group)}:events"


def member(user: str, session_id: str) -> str:
    """A session as a group member: user and session ids never contain spaces."""
    return f"{user} {session_id}"


def instrument_ticks(instrument: str) -> str:
    """An instrument's market data: a Redis Stream with one tick per entry.

    Each entry holds the value as JSON text in field ``v``; any producer may
    append (docs/redis.md, "Publishing market data"). Every instrument has a
    hash tag of its own, ``{i:<instrument>}``, apart from users and nodes.
    """
    return f"{PREFIX}:{{i:{instrument}}}:ticks"


def _node_tag(node: str) -> str:
    return f"{PREFIX}:{{n:{node}}}"


def node(node_id: str) -> str:
    """The node's registration (JSON), expiring unless its heartbeat renews it."""
    return f"{_node_tag(node_id)}:node"


def node_sessions(node_id: str) -> str:
    """The set of sessions the node claimed, as ``[user, session, epoch]`` JSON."""
    return f"{_node_tag(node_id)}:sessions"


def node_orphans(node_id: str) -> str:
    """A dead node's session index, set aside while it is being cleaned up."""
    return f"{_node_tag(node_id)}:orphans"


def node_cleanup_lock(node_id: str) -> str:
    """The lock one reaper holds while it cleans up the node (a token, with a lease)."""
    return f"{_node_tag(node_id)}:lock"


def node_cleanup(node_id: str) -> str:
    """A hash recording the cleanup of a dead node: state, by whom, runs, sessions."""
    return f"{_node_tag(node_id)}:cleanup"


_NODES_TAG = f"{PREFIX}:{{nodes}}"


def known_nodes() -> str:
    """The set of node ids that registered and were not cleaned up yet."""
    return f"{_NODES_TAG}:known"


def known_groups() -> str:
    """The set of groups that ever had a member (the consistency checker's list)."""
    return f"{PREFIX}:{{groups}}:known"


def consistency_lock() -> str:
    """The lock one node holds while it checks the cluster's shared state."""
    return f"{PREFIX}:{{groups}}:check-lock"


def retired_topics() -> str:
    """A sorted set of node ids whose Kafka topic is due for deletion, by due time."""
    return f"{_NODES_TAG}:retired"


def _broadcast_tag(topic: str) -> str:
    # One slot per broadcast channel, named by its Kafka topic, so that two
    # clusters (or test runs) sharing Redis and Kafka never mix histories.
    return f"{PREFIX}:{{b:{topic}}}"


def broadcast_history(topic: str) -> str:
    """The bounded Redis Stream of the system broadcasts sent on ``topic``."""
    return f"{_broadcast_tag(topic)}:history"


def broadcast_trimmed(topic: str) -> str:
    """The newest broadcast id trimmed from the history by its length limit."""
    return f"{_broadcast_tag(topic)}:trimmed"


def broadcast_dedupe(topic: str, sender: str, client_id: str) -> str:
    """Marks that ``sender``'s broadcast ``client_id`` is stored; holds its id.

    The sender's length comes first for the reason given in :func:`dedupe`.
    """
    return f"{_broadcast_tag(topic)}:dedupe:{len(sender)}:{sender}:{client_id}"
