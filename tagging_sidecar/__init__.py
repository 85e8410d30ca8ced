"""tagging-sidecar: forward Kafka records to a Havilah gRPC service through an adaptive worker pool.

The flow, one sub-package or module per step::

    kafka (consume) -> decode -> pool -> forward (gRPC) -> kafka (commit through the watermark)

Only :mod:`tagging_sidecar.app` knows every part.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
