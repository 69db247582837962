"""Start the ``--workers`` children first thing, so that they import while the run does.

A stage process spends most of its start-up importing (openai, aiokafka, aiohttp:
~0.7 s on an idle core, seconds on a busy one). Started only once the run knows its
broker and config, a child became ready well after the run process, and the
partitions it serves waited for it. Started here, from the command line before the
run's own imports, each child imports on the other core meanwhile, then waits for its
config file (:mod:`iterrefine.app._extra_workers` writes it; the child gives up if the run
exits first). This module imports only the standard library, to stay cheap.

The children's folder (config and stats files) is named after the run's pid, so a run
killed with SIGKILL, which cleans nothing up, leaves a folder the next ``run`` can tell
is orphaned and removes (:func:`sweep_orphaned_workdirs`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_PREFIX = "iterrefine-workers-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def sweep_orphaned_workdirs(tmp: str | None = None) -> list[Path]:
    """Remove the children's folders of runs that are gone (killed without cleaning up)."""
    removed = []
    for folder in Path(tmp or tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        owner = folder.name.removeprefix(_PREFIX).split("-", 1)[0]
        if owner.isdigit() and folder.is_dir() and not _alive(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class Prespawned:
    """``count`` child processes waiting for ``config-N.json`` in ``workdir``."""

    def __init__(self, count: int) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
        self.adopted = False
        self.procs = [
            subprocess.Popen(  # our own interpreter and module, no shell
                [sys.executable, "-m", "iterrefine.app._extra_workers",
                 str(self.config_path(index)), str(self.workdir / f"stats-{index}.json"),
                 str(os.getpid())],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            )
            for index in range(count)
        ]

    def config_path(self, index: int) -> Path:
        return self.workdir / f"config-{index}.json"

    def close(self) -> None:
        """Stop children nobody adopted (the run failed before it needed them)."""
        if self.adopted:
            return
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
