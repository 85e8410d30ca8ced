"""The reference Havilah server: counts, records ids, and misbehaves on request."""

from tagging_sidecar.sink.server import Faults, ServerTls, SinkServer

__all__ = ["Faults", "ServerTls", "SinkServer"]
