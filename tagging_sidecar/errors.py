"""The exceptions tagging-sidecar raises, in one small hierarchy::

    SidecarError                  base of everything below
    ├── ConfigError               settings are invalid; raised before anything connects
    ├── DecodeError               a record's bytes are not a valid Tagging
    ├── PoolError                 the worker pool refused work
    │   ├── PoolClosed            the pool is stopping or stopped
    │   └── PoolFull              no room within the timeout (backpressure)
    ├── ForwardError              a batch was not delivered to the gRPC service
    │   ├── RetryableForwardError the service may accept it later (UNAVAILABLE, ...)
    │   └── PermanentForwardError the service will never accept it (INVALID_ARGUMENT, ...)
    ├── DeadLetterError           a record could not be written to the dead-letter topic
    ├── FatalError                the pipeline cannot go on (guard tripped, fatal Kafka error)
    └── CommitError               Kafka refused an offset commit

Messages never contain record payloads or secrets.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base class of every error raised by tagging-sidecar."""


class ConfigError(SidecarError):
    """The configuration is invalid; ``problems`` lists one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class DecodeError(SidecarError):
    """A record value could not be decoded into a valid ``Tagging``."""


class PoolError(SidecarError):
    """The worker pool could not take a record."""


class PoolClosed(PoolError):
    """The pool is stopping or stopped and takes no more records."""


class PoolFull(PoolError):
    """The pool stayed full for the whole timeout; the caller should back off."""


class ForwardError(SidecarError):
    """A batch was not delivered to the downstream gRPC service."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class RetryableForwardError(ForwardError):
    """The downstream may accept the batch later; retry with backoff."""


class PermanentForwardError(ForwardError):
    """The downstream rejected the batch for good; retrying will not help."""


class DeadLetterError(SidecarError):
    """A record could not be written to the dead-letter topic (it stays uncommitted)."""


class FatalError(SidecarError):
    """The pipeline cannot go on (failure-rate guard tripped, fatal Kafka error)."""


class CommitError(SidecarError):
    """Kafka refused to commit offsets."""
