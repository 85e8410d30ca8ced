"""The adaptive worker pool: a library with no knowledge of Kafka or gRPC.

Items go in with :meth:`WorkerPool.dispatch` (or :meth:`WorkerPool.offer`), batches go out to
per-worker :class:`Dispatcher` objects, and results come back through a callback. How many
calls run at once follows either the seed's backlog rule (:class:`ScalingPolicy` alone) or an
:class:`AdaptiveLimit` learned from the downstream.
"""

from tagging_sidecar.pool.dispatcher import Dispatcher, EndOfWork, Rejected
from tagging_sidecar.pool.limit import AdaptiveLimit, CallLimit, LimitChange, LimitTuning
from tagging_sidecar.pool.policy import ScalingPolicy
from tagging_sidecar.pool.pool import PoolStats, WorkerPool
from tagging_sidecar.pool.worker import LINGER_BELOW

__all__ = [
    "LINGER_BELOW",
    "AdaptiveLimit",
    "CallLimit",
    "Dispatcher",
    "EndOfWork",
    "LimitChange",
    "LimitTuning",
    "PoolStats",
    "Rejected",
    "ScalingPolicy",
    "WorkerPool",
]
