"""Forwarding to the Havilah gRPC service; knows nothing of Kafka."""

from tagging_sidecar.forward.havilah import CallResult, HavilahClient, Transport, connect

__all__ = ["CallResult", "HavilahClient", "Transport", "connect"]
