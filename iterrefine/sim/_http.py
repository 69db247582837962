"""The simulator's wire: request shapes, JSON responses and errors, the listening socket."""

from __future__ import annotations

import socket
import time
from typing import Any

import msgspec
from aiohttp import web

OWNER = "iterrefine-simulator"
_SIM_HEADER = {"x-iterrefine-simulator": "1"}


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(msgspec.Struct):
    messages: list[ChatMessage]
    model: str = "sim"
    response_format: dict[str, Any] | None = None
    stream: bool = False


class EmbeddingsRequest(msgspec.Struct):
    input: str | list[str]
    model: str = "sim"


class CompletionsRequest(msgspec.Struct):
    prompt: str
    model: str = "sim"
    echo: bool = False
    logprobs: int | None = None


chat_decoder = msgspec.json.Decoder(ChatRequest)
embeddings_decoder = msgspec.json.Decoder(EmbeddingsRequest)
completions_decoder = msgspec.json.Decoder(CompletionsRequest)
_encoder = msgspec.json.Encoder()


def sim_model_name(requested: str) -> str:
    """The model name a response reports: always marked as simulated."""
    return requested if requested.startswith("sim-") else f"sim-{requested}"


def text_of(message: ChatMessage) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_encoder.encode(payload),
        status=status,
        content_type="application/json",
        headers={**_SIM_HEADER, **(headers or {})},
    )


def error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": kind}}
    return json_response(body, status, headers)


def bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def completion_body(
    request_id: str, model: str, content: str, finish: str, *, prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A chat completion as OpenAI shapes it, fingerprinted as the simulator's: the
    client marks output made from it as simulated by this, whatever URL it used."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": sim_model_name(model),
        "system_fingerprint": OWNER,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish,
            "logprobs": None,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
