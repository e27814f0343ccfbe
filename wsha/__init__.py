"""wsha: a high-availability WebSocket gateway on Twisted, Redis and Kafka."""

__version__ = "0.1.0"
