"""Forwarding to the Havilah gRPC service; knows nothing of Kafka."""

from tagging_sidecar.forward.havilah import CallResult, HavilahClient, Transport, connect
from tagging_sidecar.forward.health import DownstreamHealth

__all__ = ["CallResult", "DownstreamHealth", "HavilahClient", "Transport", "connect"]
