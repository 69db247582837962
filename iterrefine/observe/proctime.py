"""How long this process has existed: a command's wall time as a user's stopwatch sees it.

The interpreter's start-up and imports happen before any of our code runs, so a clock
started in ``main()`` misses them. Linux records each process's start in
``/proc/self/stat`` (clock ticks since boot), comparable with ``/proc/uptime``.
"""

from __future__ import annotations

import os
import time

#: When this module was first imported: the fallback origin off Linux.
_IMPORTED = time.perf_counter()


def process_age_s() -> float:
    """Seconds since this process started (10 ms resolution; since import elsewhere)."""
    try:
        with open("/proc/self/stat", "rb") as handle:
            stat = handle.read()
        with open("/proc/uptime", "rb") as handle:
            uptime_s = float(handle.read().split()[0])
    except (OSError, ValueError):
        return time.perf_counter() - _IMPORTED
    # Field 22 (starttime) counts from the end of the command name, which may hold spaces.
    fields = stat[stat.rindex(b")") + 2:].split()
    start_ticks = int(fields[19])
    return max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))


def process_started_at() -> float:
    """The process start on the ``time.perf_counter()`` clock."""
    return time.perf_counter() - process_age_s()


class Timeline:
    """When each phase of a command ended, in seconds since ``origin`` (perf_counter).

    ``iterrefine run`` reports it in its summary (``timeline``) so that a slow start or
    a slow exit shows which phase took the time.
    """

    def __init__(self, origin: float) -> None:
        self._origin = origin
        self.marks: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """``phase`` ended now (the first mark of a phase counts)."""
        self.marks.setdefault(phase, round(time.perf_counter() - self._origin, 3))
