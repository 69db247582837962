"""Checks ``iterrefine run`` makes before it ingests anything, so nothing is paid for in vain.

Each failure is a :class:`PreflightError` (a :class:`ConfigError`: exit code 2) whose
message names the fix, and the whole set takes a few seconds at most:

* every output file (curated, rejected, DLQ) can be written: its directory exists or
  can be made, and the path is not a directory;
* every LLM role answers and accepts its key (:meth:`LLMClient.probe`: ``GET
  /models``, or a one-token completion where that route does not exist); a server whose
  port takes connections but is too busy to answer within 5 s is waited for, up to the
  role's ``preflight_wait_s`` (:func:`wait_while_busy`);
* every role's model is served (:func:`check_models_served`): a mistyped name stops
  the run here, naming the role and the model, instead of dead-lettering every item.

With the response cache on, an endpoint that is there but busy (HTTP 5xx or 429) does
not stop the run (:func:`check_llm_roles_or_cache`): a rerun whose answers are all
cached finishes without it, and uncached calls wait for it as any outage's do.

Config keys are checked when the config is parsed (unknown keys are errors there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from iterrefine.errors import ConfigError
from iterrefine.llm.circuit import Circuit
from iterrefine.llm.client import LLMClient
from iterrefine.runtime import StageRunner

log = structlog.get_logger("iterrefine.preflight")

#: Per role; connection refusals answer at once, a black-holed host takes this long.
PROBE_TIMEOUT_S = 5.0


class PreflightError(ConfigError):
    """Something ``run`` would only have found out after paying for the pipeline."""

    reason = "preflight"


def check_output_paths(paths: Iterable[Path]) -> None:
    """Each path's directory exists (made if missing) and takes a new file; none is a dir."""
    for path in paths:
        if path.is_dir():
            raise PreflightError(f"output {path} is a directory: give a file name, e.g. "
                                 f"{path / 'curated.jsonl'}")
        parent = path.parent
        blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise PreflightError(f"output {path} cannot be created: {blocker} is not a "
                                 "directory; choose an output path in a writable directory")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PreflightError(
                f"cannot create the directory of output {path}: {exc.strerror or exc}; "
                "choose an output path in a writable directory") from None
        try:
            # A real file in the real directory: os.access would miss read-only mounts.
            handle, probe = tempfile.mkstemp(prefix=".iterrefine-preflight-", dir=parent)
        except OSError as exc:
            raise PreflightError(
                f"cannot write to {parent} (for output {path}): {exc.strerror or exc}; choose "
                "a writable directory or fix its permissions") from None
        os.close(handle)
        with contextlib.suppress(OSError):
            os.unlink(probe)
        if path.exists() and not os.access(path, os.W_OK):
            raise PreflightError(f"output {path} exists and is read-only: remove it or choose "
                                 "another output path")


async def check_llm_roles(clients: Iterable[LLMClient]) -> None:
    """Every role's endpoint answers and takes its key; all roles are asked at once."""
    clients = list(clients)
    started = time.monotonic()

    async def one(client: LLMClient) -> str | None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                return await client.probe()
        except TimeoutError:
            return await wait_while_busy(client)

    problems = [p for p in await asyncio.gather(*(one(c) for c in clients)) if p is not None]
    if problems:
        raise PreflightError(
            "an LLM endpoint is not usable, nothing was ingested or paid for:\n  "
            + "\n  ".join(problems))
    log.info("preflight_ok", roles=[c.role for c in clients],
             seconds=round(time.monotonic() - started, 3))


#: Statuses of an endpoint that is there but cannot answer now.
_BUSY = ("429", "500", "502", "503", "504")


async def check_llm_roles_or_cache(clients: Iterable[LLMClient], *, cached: bool) -> None:
    """:func:`check_llm_roles`, except that with the cache on (``cached``) roles whose
    endpoint is busy are only warned about; a dead host or a rejected key still stop."""
    clients = list(clients)
    try:
        await check_llm_roles(clients)
    except PreflightError:
        if not cached:
            raise
        busy = [c for c in clients if c.last_probe is None or c.last_probe[1] is not None]
        if not busy or any(c.last_probe is None or not c.last_probe[0].startswith(_BUSY)
                           for c in busy):
            raise
        log.warning("preflight_endpoint_busy",
                    roles={c.role: c.last_probe[0] for c in busy if c.last_probe},
                    effect="cached answers are used; uncached calls wait for the endpoint")
        clients = [c for c in clients if c not in busy]
    await check_models_served(clients)


async def check_models_served(clients: Iterable[LLMClient]) -> None:
    """Every role's model is one its endpoint serves (:meth:`LLMClient.check_model`)."""
    clients = list(clients)

    async def one(client: LLMClient) -> str | None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                return await client.check_model()
        except TimeoutError:
            return None  # no verdict on the name: the endpoint answered its probe already

    problems = [p for p in await asyncio.gather(*(one(c) for c in clients)) if p is not None]
    if problems:
        raise PreflightError("a model name is not served, nothing was ingested or paid "
                             "for:\n  " + "\n  ".join(problems))


async def wait_while_busy(client: LLMClient) -> str | None:
    """A probe got no answer in time: wait for a busy server, give up on a dead one.

    A local single-slot server (llama.cpp) does not answer ``/v1/models`` while it
    generates, though it is up. If its port takes a connection, the server is there:
    it gets ``preflight_wait_s`` (the role's setting) to answer a fresh probe. A host
    that takes no connection is not a busy server, and the run stops at once.
    """
    config = client.config
    where = f"LLM role {client.role!r} at {config.base_url}"
    if not await _port_open(config.base_url):
        return (f"{where}: no answer within {PROBE_TIMEOUT_S:g} s and its port takes no "
                "connection; check base_url and that the server is running")
    log.warning("preflight_endpoint_busy", role=client.role, base_url=config.base_url,
                wait_s=config.preflight_wait_s)
    try:
        async with asyncio.timeout(config.preflight_wait_s):
            return await client.probe()
    except TimeoutError:
        return (f"{where}: the server takes connections but answered nothing within "
                f"{PROBE_TIMEOUT_S + config.preflight_wait_s:g} s; if it is busy with a long "
                "generation, raise preflight_wait_s for this role")


async def _port_open(base_url: str, timeout_s: float = 3.0) -> bool:
    """Whether ``base_url``'s host takes a TCP connection on its port."""
    url = urlsplit(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(url.hostname or "localhost", port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class RunAbort:
    """Ends ``run`` early for a problem only the operator can fix; ``problem`` says which.

    As ``on_circuit_open``: a key rejected mid-run. A probe cannot fix a wrong key and
    ``run`` is not a long-lived worker waiting for an operator, so the circuit is given
    up (the waiting calls leave their messages uncommitted, none are dead-lettered)
    and ``stop`` is set. Outages are not problems here: their calls wait.
    """

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self.problem: str | None = None

    def abort(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem
            log.error("run_aborted", problem=problem)
        self._stop.set()

    def __call__(self, circuit: Circuit) -> None:
        if circuit.open_reason != "auth":
            return  # an outage: the calls wait for the endpoint, the run goes on
        circuit.give_up("the API key was rejected")
        self.abort(f"the LLM endpoint of role {circuit.role!r} rejected the API key mid-run; "
                   "fix api_key_env (or the key it names) and rerun the same command: "
                   "answers already received are cached")


async def watch_group_joins(
    runners: Sequence[StageRunner], *, timeout_s: float, bootstrap: str, abort: RunAbort,
) -> None:
    """Abort the run when its stages cannot join their consumer groups in time.

    Seen on the embedded Tansu broker: after ``run --workers N`` against a ``broker
    up`` broker, a later run's JoinGroup was held forever for members that had left.
    Waiting without end would pay for nothing; say what to do instead.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if runners and all(runner.ready.is_set() for runner in runners):
            return
        await asyncio.sleep(0.2)
    stuck = sorted(runner.group_id for runner in runners if not runner.ready.is_set())
    abort.abort(
        f"the stages could not join their consumer groups ({', '.join(stuck) or 'all'}) on "
        f"{bootstrap} within {timeout_s:g} s; members of an earlier run are probably stuck "
        "in them. Restart the broker (`iterrefine broker down`, then `iterrefine broker "
        "up`), or use another --topic-prefix")
