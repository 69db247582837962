"""The stage runtime: concurrent, at-least-once, contiguous-prefix commits."""

from iterrefine.runtime._offsets import PartitionTracker
from iterrefine.runtime.runner import StageRunner
from iterrefine.runtime.stage import (
    Handler,
    InlineHandler,
    Limits,
    Output,
    Stage,
    StatefulHandler,
    decode_envelope,
    decode_raw_record,
)

__all__ = [
    "Handler",
    "InlineHandler",
    "Limits",
    "Output",
    "PartitionTracker",
    "Stage",
    "StageRunner",
    "StatefulHandler",
    "decode_envelope",
    "decode_raw_record",
]
