"""Curate from Python (a notebook, a script): records or a file in, rows and summary out.

:func:`curate` runs the same pipeline as ``iterrefine run`` (embedded broker unless the
config names one, the simulator with ``llm="sim"``) and hands back the curated,
rejected and dead-lettered rows with the run's summary. In a notebook, whose event loop
is already running, it runs the pipeline on a thread of its own; ``await acurate(...)``
runs it on the caller's loop. docs/python-api.md shows both.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import structlog

from iterrefine.app.dataset import read_rows, save_dataset
from iterrefine.app.exit_codes import run_exit_code
from iterrefine.app.run import RunOptions, RunResult, run_pipeline
from iterrefine.config import Config, load_config
from iterrefine.errors import ConfigError
from iterrefine.io.export import ExportPaths
from iterrefine.io.inputs import InputSpec
from iterrefine.sim import SimConfig

#: The simulator as ``iterrefine run --llm sim`` starts it (its flags' defaults).
DEFAULT_SIM = SimConfig(latency_ms=100.0, jitter_ms=50.0, capacity=64, low_share=0.5,
                        lose_prob=0.5, retry_after_s=0.2)


@dataclass(frozen=True)
class Curation:
    """What a curation gave back: rows as ``iterrefine run`` writes them, and the summary.

    Each row has ``id``, ``instruction``, ``input``, ``output``, ``status`` and ``item``
    (the whole item: scores, rounds, verdicts, provenance); a dead letter has ``id``,
    ``reason`` and ``error``. ``exit_code`` is what ``iterrefine run`` would exit with
    (README, "Exit codes": 4 when ``max_cost`` stopped it).
    """

    curated: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    dlq: list[dict[str, Any]]
    summary: dict[str, Any]
    exit_code: int
    #: Where the rows are on disk, when ``output`` was given (else None: a temporary
    #: directory, deleted once the rows were read).
    paths: ExportPaths | None

    def save_dataset(self, folder: str | Path) -> Path:
        """The curated rows as a ``save_to_disk`` folder with a dataset card (hf extra)."""
        return save_dataset(self.summary, self.curated, folder)


async def acurate(
    data: Iterable[Mapping[str, Any]] | str | Path,
    *,
    llm: Literal["sim"] | None = None,
    config: Config | str | Path | None = None,
    output: str | Path | None = None,
    sample: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    max_cost: float | None = None,
    sim: SimConfig | None = None,
    timeout_s: float | None = None,
    progress_every_s: float | None = None,
) -> Curation:
    """Curate ``data``: records (Alpaca, Dolly, messages or ShareGPT dicts) or a file path.

    ``llm="sim"`` answers every role with the built-in simulator (``sim`` tunes it);
    otherwise ``config`` (a :class:`Config` or a TOML path) names the endpoints.
    ``output``: a ``.jsonl`` path to keep the rows on disk (``OUT.rejected.jsonl`` and
    ``OUT.dlq.jsonl`` beside it). ``sample``/``limit``/``seed``: a trial, whose summary
    estimates the whole input (``summary["cost"]["estimate_full_input"]``).
    ``max_cost`` stops new work once the calls cost that much at the roles' prices.
    """
    # As `iterrefine run`: answers are kept, so a rerun pays only for calls not yet made.
    run_config = (config if isinstance(config, Config)
                  else load_config(config, None, {"cache": {"mode": "on"}}))
    if max_cost is not None:
        run_config = msgspec.structs.replace(run_config, max_cost=max_cost)
    if llm is None and sim is not None:
        llm = "sim"
    if llm != "sim" and not {"strong", "backbone"} <= run_config.llm.keys():
        raise ConfigError(
            'no LLM configured: pass llm="sim" for the built-in simulator (for demos and '
            "tests; results are marked simulated), or a config naming real OpenAI-compatible "
            "endpoints ([llm.strong] and [llm.backbone] tables with base_url and model)")
    with tempfile.TemporaryDirectory(prefix="iterrefine-") as scratch:
        workdir = Path(scratch)
        source = _source(data, workdir)
        out = Path(output) if output is not None else workdir / "curated.jsonl"
        spec = InputSpec(str(source), limit=limit, sample=sample, seed=seed)
        result = await run_pipeline(run_config, RunOptions(
            input=source, output=out, input_spec=spec, timeout_s=timeout_s,
            sim=(sim or DEFAULT_SIM) if llm == "sim" else None,
            progress_every_s=progress_every_s))
        return _collected(result, keep=output is not None)


def curate(data: Iterable[Mapping[str, Any]] | str | Path, **options: Any) -> Curation:
    """:func:`acurate`, from code that is not async; in a notebook too.

    Jupyter runs an event loop already (``asyncio.run`` would refuse), so there the
    pipeline runs on a thread of its own with a loop of its own, and this waits for it.
    """
    _quiet_logging()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(acurate(data, **options))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="iterrefine") as pool:
        return pool.submit(asyncio.run, acurate(data, **options)).result()


def _quiet_logging() -> None:
    """Warnings and errors only, unless the caller configured logging already."""
    if not structlog.is_configured():
        from iterrefine.observe.logging import configure_logging

        configure_logging(json=False, level="warning")


def _source(data: Iterable[Mapping[str, Any]] | str | Path, workdir: Path) -> Path:
    """A path as it is; records written to a JSON lines file in ``workdir``."""
    if isinstance(data, str | Path):
        return Path(data)
    path = workdir / "input.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for record in data:
            handle.write(json.dumps(dict(record), ensure_ascii=False) + "\n")
    return path


def _collected(result: RunResult, *, keep: bool) -> Curation:
    ingest = result.ingest
    code = run_exit_code(result.summary, invalid_input=ingest.invalid + ingest.duplicate_ids
                         + ingest.duplicate_records)
    paths = result.paths
    return Curation(curated=_rows(paths.curated), rejected=_rows(paths.rejected),
                    dlq=_rows(paths.dlq), summary=result.summary, exit_code=code,
                    paths=paths if keep else None)


def _rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one output file (JSON lines, or Parquet with the parquet extra)."""
    if path.exists() and path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq  # the parquet extra, as for writing it

        return list(pq.read_table(path).to_pylist())
    return read_rows(path)
