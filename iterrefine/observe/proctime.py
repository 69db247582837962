"""When this command started: a command's wall time as a user's stopwatch sees it.

The interpreter's start-up and imports happen before any of our code runs, so a clock
started in ``main()`` misses them. Linux records each process's start in
``/proc/self/stat`` (clock ticks since boot, comparable with ``/proc/uptime``), but that
is when the process was *forked*: a shell that runs ``… && pip install . && exec
iterrefine run …`` (or a container entrypoint, a Dockerfile ``RUN``) execs iterrefine in
a process that has been waiting for its children all along, and its age counted the
venv creation and the install (145 s for a 7.7 s run).

So the origin is decided once, when this module is first imported:

- the process's age then, if it spent nearly all of it busy (on a CPU or waiting for
  one, ``/proc/self/schedstat``): nothing but our interpreter ran in it;
- otherwise, only its busy time: it sat idle for :data:`IDLE_BEFORE_EXEC_S` or more
  before this interpreter began (a shell waiting for other commands), and that is
  not this command's time. What the shell itself computed before the exec is a few
  milliseconds.
"""

from __future__ import annotations

import os
import time

#: An idle stretch this long before our first import means the process was exec'd into
#: late; shorter ones (a cold disk read during start-up) are counted as start-up.
IDLE_BEFORE_EXEC_S = 1.0

#: When this module was first imported: the fallback origin off Linux.
_IMPORTED = time.perf_counter()


def process_age_s() -> float | None:
    """Seconds since this process was forked (10 ms resolution), or None off Linux."""
    try:
        with open("/proc/self/stat", "rb") as handle:
            stat = handle.read()
        with open("/proc/uptime", "rb") as handle:
            uptime_s = float(handle.read().split()[0])
    except (OSError, ValueError):
        return None
    # Field 22 (starttime) counts from the end of the command name, which may hold spaces.
    fields = stat[stat.rindex(b")") + 2:].split()
    start_ticks = int(fields[19])
    return max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))


def busy_s() -> float:
    """Seconds this process's main thread ran on a CPU or waited in a run queue for one.

    Sleeping (a shell waiting for its children) counts in neither. Without
    ``/proc/self/schedstat``, the CPU time alone.
    """
    try:
        with open("/proc/self/schedstat", "rb") as handle:
            run_ns, wait_ns = handle.read().split()[:2]
        return (int(run_ns) + int(wait_ns)) / 1e9
    except (OSError, ValueError):
        return time.process_time()


def startup_s(age_s: float | None, busy: float) -> float:
    """How much of a process's life before our first import belongs to this command."""
    if age_s is None:
        return 0.0
    return age_s if age_s - busy < IDLE_BEFORE_EXEC_S else min(age_s, busy)


_STARTUP_S = startup_s(process_age_s(), busy_s())


def command_started_at() -> float:
    """When this command started, on the ``time.perf_counter()`` clock."""
    return _IMPORTED - _STARTUP_S


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
