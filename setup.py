"""Build guard: no wheel without its stages.

The stages live in ``consumers/`` at the top of the repository and ship as
``iterrefine.consumers`` through the symlink ``iterrefine/consumers -> ../consumers``
(pyproject.toml says why). A checkout made without symlinks (Git for Windows' default,
``core.symlinks = false``) holds a 12-byte text file there instead, and setuptools would
silently build a wheel with no stages. Everything else is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup

LINK = Path(__file__).resolve().parent / "iterrefine" / "consumers"

if not (LINK / "__init__.py").is_file():
    found = ("a symlink to a missing directory" if LINK.is_symlink()
             else f"a {LINK.stat().st_size}-byte file" if LINK.is_file() else "missing")
    raise SystemExit(
        f"iterrefine/consumers is {found}, not the link to ../consumers that ships the "
        "pipeline's stages: this checkout was made without symlinks. Clone again with "
        "`git clone -c core.symlinks=true ...` (on Windows, enable Developer Mode or run "
        "as administrator first), or replace the file with a copy of consumers/.")

setup()
