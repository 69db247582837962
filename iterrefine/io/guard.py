"""``iterrefine run`` never silently replaces an earlier run's results.

Before anything starts, ``run`` looks for the files it would write (the curated,
rejected and dead-letter files, and the ``--summary``). If one exists, it stops (exit 2)
naming them and the two ways on: ``--overwrite``, or another ``-o``.

One exception keeps "rerun the identical command" the way to finish a job that was cut
short (Ctrl-C, SIGTERM, ``--timeout-s``: exit 3): such a run leaves a marker beside its
curated file (``.NAME.incomplete``), and the next run of that output replaces those
files without ``--overwrite`` (the response cache answers what was already paid for).
A run that finishes removes the marker; its results are then protected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from iterrefine.errors import ConfigError


def incomplete_marker(curated: Path) -> Path:
    """The marker a cut-short run leaves beside its curated file."""
    return curated.with_name(f".{curated.name}.incomplete")


@dataclass(frozen=True)
class OutputGuard:
    """The files a run will write, checked before it starts; :meth:`finished` after it."""

    files: tuple[Path, ...]
    marker: Path

    @classmethod
    def check(cls, curated: Path, others: Sequence[Path], *, overwrite: bool) -> OutputGuard:
        """Raise unless writing ``curated`` and ``others`` loses nothing a user has to keep."""
        guard = cls((curated, *others), incomplete_marker(curated))
        existing = [path for path in guard.files if path.exists()]
        if existing and not overwrite and not guard.marker.exists():
            names = ", ".join(str(path) for path in existing)
            raise ConfigError(
                f"{names} already exist{'s' if len(existing) == 1 else ''}: the results of an "
                "earlier run. Pass --overwrite to replace them, or choose another -o "
                "(and --summary)")
        return guard

    def finished(self, *, complete: bool) -> None:
        """Mark the outputs of a cut-short run replaceable; unmark a finished run's."""
        if complete:
            self.marker.unlink(missing_ok=True)
        else:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text("written by a run that was cut short: the next run of "
                                   "this output replaces these files\n")
