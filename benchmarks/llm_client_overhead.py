"""CPU cost per chat request of LLMClient, against the floors beneath it.

Starts the LLM simulator (``iterrefine sim-llm``, no latency, no capacity limit) in a
separate process, then sends ``--requests`` chat requests at ``--concurrency`` through
each contender in turn and measures this process's CPU time (``time.process_time``)
and wall time. The simulator's own CPU is reported too: if it is close to the wall
time, the simulator and not the contender bounded requests/s.

Contenders, from the full stack down to the floor:

* ``llm_client``: :class:`iterrefine.llm.LLMClient` ``.chat`` (limits, retries, metrics);
* ``openai_create``: bare ``AsyncOpenAI.chat.completions.create`` (pydantic models);
* ``openai_post_raw``: ``AsyncOpenAI.post(cast_to=httpx2.Response)`` with a pre-encoded
  body, the response decoded with msgspec: the least work through openai;
* ``httpx2_raw`` / ``aiohttp_raw``: a POST with no SDK at all, decoded with msgspec;
* ``*_aiohttp``: the same on openai's own aiohttp transport
  (``openai.DefaultAioHttpClient``, what LLMClient uses) instead of httpx2's pool.

Run ``python benchmarks/llm_client_overhead.py [--requests 5000]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import httpx2
import msgspec
import openai
from prometheus_client import CollectorRegistry

from iterrefine.config import LLMRoleConfig
from iterrefine.llm import LLMClient
from iterrefine.observe.metrics import Metrics
from iterrefine.tasks.prompts import build_messages

MODEL = "bench"
Messages = list[dict[str, str]]
Send = Callable[[Messages], Awaitable[None]]
Contender = Callable[[LLMRoleConfig], AbstractAsyncContextManager[Send]]


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message


class _Completion(msgspec.Struct):
    choices: list[_Choice]


_decode_completion = msgspec.json.Decoder(_Completion).decode
_encode = msgspec.json.Encoder().encode


def _body(messages: Messages, config: LLMRoleConfig) -> bytes:
    return _encode(
        {
            "model": config.model,
            "messages": messages,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
        }
    )


# -- the simulator -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def simulator() -> Iterator[tuple[str, int]]:
    """The simulator in its own process: (base_url, pid), once GET /health answers."""
    port = _free_port()
    command = [
        sys.executable, "-m", "iterrefine.cli", "sim-llm", "--port", str(port),
        "--latency-ms", "0", "--jitter-ms", "0", "--capacity", "0",
        "--request-log-size", "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    stderr = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"simulator did not start: {stderr}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1", process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cpu_s_of(pid: int) -> float | None:
    """User + system CPU seconds of another process (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- contenders ----------------------------------------------------------------------


@asynccontextmanager
async def llm_client(config: LLMRoleConfig) -> AsyncIterator[Send]:
    async with LLMClient("bench", config, metrics=Metrics(CollectorRegistry())) as client:

        async def send(messages: Messages) -> None:
            await client.chat(messages)

        yield send


def _http_client(config: LLMRoleConfig, *, aiohttp_transport: bool) -> httpx2.AsyncClient:
    size = config.max_concurrency
    limits = httpx2.Limits(max_connections=size, max_keepalive_connections=size)
    if aiohttp_transport:
        return openai.DefaultAioHttpClient(limits=limits)
    return httpx2.AsyncClient(limits=limits)


def _openai(config: LLMRoleConfig, *, aiohttp_transport: bool) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="not-needed",
        base_url=config.base_url,
        max_retries=0,
        http_client=_http_client(config, aiohttp_transport=aiohttp_transport),
    )


def _openai_create(*, aiohttp_transport: bool) -> Contender:
    @asynccontextmanager
    async def contender(config: LLMRoleConfig) -> AsyncIterator[Send]:
        async with _openai(config, aiohttp_transport=aiohttp_transport) as api:
            yield functools.partial(_create, api, config)

    return contender


async def _create(api: openai.AsyncOpenAI, config: LLMRoleConfig, messages: Messages) -> None:
    completion = await api.chat.completions.create(
        model=config.model,
        messages=messages,  # type: ignore[arg-type]  # our dicts are the param shape
        temperature=config.temperature,
        max_tokens=config.max_tokens,
    )
    assert completion.choices[0].message.content


def _openai_post_raw(*, aiohttp_transport: bool) -> Contender:
    @asynccontextmanager
    async def contender(config: LLMRoleConfig) -> AsyncIterator[Send]:
        async with _openai(config, aiohttp_transport=aiohttp_transport) as api:
            yield functools.partial(_post_raw, api, config)

    return contender


_JSON_HEADERS: openai.RequestOptions = {"headers": {"Content-Type": "application/json"}}


async def _post_raw(api: openai.AsyncOpenAI, config: LLMRoleConfig, messages: Messages) -> None:
    response = await api.post(
        "/chat/completions",
        cast_to=httpx2.Response,
        content=_body(messages, config),
        options=_JSON_HEADERS,
    )
    assert _decode_completion(response.content).choices[0].message.content


def _httpx2_raw(*, aiohttp_transport: bool) -> Contender:
    @asynccontextmanager
    async def contender(config: LLMRoleConfig) -> AsyncIterator[Send]:
        url = f"{config.base_url}/chat/completions"
        headers = {"Authorization": "Bearer not-needed", "Content-Type": "application/json"}
        async with _http_client(config, aiohttp_transport=aiohttp_transport) as http:

            async def send(messages: Messages) -> None:
                response = await http.post(url, content=_body(messages, config), headers=headers)
                response.raise_for_status()
                assert _decode_completion(response.content).choices[0].message.content

            yield send

    return contender


@asynccontextmanager
async def aiohttp_raw(config: LLMRoleConfig) -> AsyncIterator[Send]:
    url = f"{config.base_url}/chat/completions"
    headers = {"Authorization": "Bearer not-needed", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=config.max_concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(messages: Messages) -> None:
            async with session.post(
                url, data=_body(messages, config), headers=headers
            ) as response:
                response.raise_for_status()
                body = await response.read()
            assert _decode_completion(body).choices[0].message.content

        yield send


CONTENDERS: dict[str, Contender] = {
    "llm_client": llm_client,
    "openai_create": _openai_create(aiohttp_transport=False),
    "openai_create_aiohttp": _openai_create(aiohttp_transport=True),
    "openai_post_raw": _openai_post_raw(aiohttp_transport=False),
    "openai_post_raw_aiohttp": _openai_post_raw(aiohttp_transport=True),
    "httpx2_raw": _httpx2_raw(aiohttp_transport=False),
    "httpx2_raw_aiohttp": _httpx2_raw(aiohttp_transport=True),
    "aiohttp_raw": aiohttp_raw,
}


# -- measurement ---------------------------------------------------------------------


async def _drive(send: Send, messages: list[Messages], requests: int, concurrency: int) -> None:
    """``requests`` sends by ``concurrency`` workers, as a stage's in-flight window would."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send(messages[remaining % len(messages)])

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(
    name: str,
    config: LLMRoleConfig,
    messages: list[Messages],
    *,
    requests: int,
    concurrency: int,
    warmup: int,
    sim_pid: int,
) -> dict[str, Any]:
    async with CONTENDERS[name](config) as send:
        # Opens the connections and warms caches; not measured.
        await _drive(send, messages, warmup, concurrency)
        sim_cpu = _cpu_s_of(sim_pid)
        cpu, wall = time.process_time(), time.perf_counter()
        await _drive(send, messages, requests, concurrency)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        sim_after = _cpu_s_of(sim_pid)
    result = {
        "cpu_us_per_request": round(cpu / requests * 1e6, 1),
        "requests_per_s": round(requests / wall, 1),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
    }
    if sim_cpu is not None and sim_after is not None:
        result["sim_cpu_us_per_request"] = round((sim_after - sim_cpu) / requests * 1e6, 1)
    return result


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each number over the repeats, plus the raw runs."""
    keys = runs[0].keys()
    summary: dict[str, Any] = {k: round(statistics.median(r[k] for r in runs), 1) for k in keys}
    if len(runs) > 1:
        summary["runs"] = runs
    return summary


async def run(args: argparse.Namespace, base_url: str, sim_pid: int) -> dict[str, Any]:
    config = LLMRoleConfig(base_url=base_url, model=MODEL, max_concurrency=args.concurrency)
    # Prompts are built up front: this measures the client, not the prompt builder.
    messages = [
        build_messages(
            "score",
            {
                "instruction": f"Summarise item {n} of the benchmark in one sentence.",
                "input": "The quick brown fox jumps over the lazy dog. " * 8,
                "output": "A fox jumps over a dog.",
            },
        )
        for n in range(256)
    ]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in args.contenders}
    # Repeats interleave the contenders so that drift (thermal, neighbours) hits all alike.
    for _ in range(args.repeat):
        for name in args.contenders:
            results[name].append(
                await measure(
                    name, config, messages, requests=args.requests,
                    concurrency=args.concurrency, warmup=args.warmup, sim_pid=sim_pid,
                )
            )
    return {name: _summary(runs) for name, runs in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="measured requests per run")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--warmup", type=int, default=500, help="unmeasured requests first")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender (median)")
    parser.add_argument(
        "--contenders", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS)
    )
    args = parser.parse_args()
    with simulator() as (base_url, sim_pid):
        results = asyncio.run(run(args, base_url, sim_pid))
    report = {
        "benchmark": "llm_client_overhead",
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            # Other work on the machine shows up as noise in CPU time too.
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "openai": openai.__version__,
            "httpx2": httpx2.__version__,
            "aiohttp": aiohttp.__version__,
            "msgspec": msgspec.__version__,
        },
        "parameters": {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "simulator": "separate process, latency 0 ms, capacity unlimited",
        },
        "results": results,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
