"""What a sample LLM generates, in the OpenAI API's shapes; pure, no I/O.

Promises:
- a generation is a deterministic function of the request and the backend's name:
  the tokens echo the prompt as `[<backend>] <prompt>`, one whitespace-separated
  word per token (every token after the first carries its leading space, so the
  tokens concatenate to the text);
- `max_tokens` cuts the generation (finish_reason "length"); with vLLM's
  `ignore_eos: true` the generation runs on with filler words until exactly
  `max_tokens` tokens (how the tests make a long stream from a short prompt);
- the objects are those of https://platform.openai.com/docs/api-reference/chat
  and /completions: `chat.completion`, `chat.completion.chunk`, `text_completion`,
  with `model` echoing the requested model; a stream carries `usage` in one extra
  final chunk with empty `choices` only when `stream_options.include_usage` is true,
  as OpenAI does.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

Api = Literal["chat", "completion"]
# OpenAI's legacy completions default to 16 tokens; chat has no limit but the model's.
COMPLETION_DEFAULT_MAX_TOKENS = 16
# Bounds a generation so a typo cannot stream for hours (ignore_eos runs to max_tokens).
MAX_TOKENS_LIMIT = 1_000_000
SSE_DONE = b"data: [DONE]\n\n"


class InvalidRequest(ValueError):
    """A request body the OpenAI API would refuse with 400."""


@dataclass(frozen=True)
class Generation:
    """One parsed request: which API, which model, what to say, how long, how to stream."""

    api: Api
    model: str
    prompt: str
    prompt_tokens: int
    max_tokens: int | None
    ignore_eos: bool
    stream: bool
    include_usage: bool
    request_id: str

    def tokens(self, backend: str) -> Iterator[str]:
        """The generated tokens, at most max_tokens of them."""
        words = f"[{backend}] {self.prompt}".split()
        limit = self.max_tokens
        count = 0
        while limit is None or count < limit:
            if count < len(words):
                word = words[count]
            elif self.ignore_eos and limit is not None:
                word = f"token{count}"
            else:
                return
            yield word if count == 0 else " " + word
            count += 1

    def finish_reason(self, completion_tokens: int, backend: str) -> str:
        natural = len(f"[{backend}] {self.prompt}".split())
        return "length" if self.ignore_eos or completion_tokens < natural else "stop"

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    # --- whole answers ---------------------------------------------------------

    def answer(self, backend: str) -> dict[str, Any]:
        """The non-streaming answer: chat.completion or text_completion."""
        text = "".join(self.tokens(backend))
        count = sum(1 for _ in self.tokens(backend))
        reason = self.finish_reason(count, backend)
        if self.api == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return {**self._envelope(streaming=False), "choices": [choice], "usage": self.usage(count)}

    # --- stream chunks ---------------------------------------------------------

    def first_chunk(self) -> dict[str, Any] | None:
        """Chat streams open with the assistant's role and no content; completions do not."""
        if self.api != "chat":
            return None
        return self._chunk({"role": "assistant", "content": ""}, None)

    def token_chunk(self, token: str) -> dict[str, Any]:
        return self._chunk(token, None)

    def last_chunk(self, completion_tokens: int, backend: str) -> dict[str, Any]:
        return self._chunk(None, self.finish_reason(completion_tokens, backend))

    def usage_chunk(self, completion_tokens: int) -> dict[str, Any] | None:
        if not self.include_usage:
            return None
        return {
            **self._envelope(streaming=True),
            "choices": [],
            "usage": self.usage(completion_tokens),
        }

    def _chunk(self, content: str | dict[str, Any] | None, reason: str | None) -> dict[str, Any]:
        if self.api == "chat":
            if isinstance(content, dict):
                delta = content
            else:
                delta = {} if content is None else {"content": content}
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": reason,
            }
        else:
            text = content if isinstance(content, str) else ""
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        chunk = {**self._envelope(streaming=True), "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None  # OpenAI: null on every chunk but the usage chunk
        return chunk

    def _envelope(self, *, streaming: bool) -> dict[str, Any]:
        if self.api == "chat":
            kind = "chat.completion.chunk" if streaming else "chat.completion"
            prefix = "chatcmpl-"
        else:
            kind, prefix = "text_completion", "cmpl-"
        return {
            "id": prefix + self.request_id,
            "object": kind,
            "created": int(time.time()),
            "model": self.model,
        }


def sse_event(chunk: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON chunk (https://html.spec.whatwg.org/#server-sent-events)."""
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def parse_chat(body: dict[str, Any], default_model: str) -> Generation:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(map(_is_message, messages)):
        raise InvalidRequest("messages must be a non-empty list of {role, content} objects")
    prompt = messages[-1]["content"]
    prompt_tokens = sum(len(m["content"].split()) for m in messages)
    return _parse(body, "chat", default_model, prompt, prompt_tokens, None, messages)


def parse_completion(body: dict[str, Any], default_model: str) -> Generation:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest("prompt must be a string (or a list of one string)")
    return _parse(
        body,
        "completion",
        default_model,
        prompt,
        len(prompt.split()),
        COMPLETION_DEFAULT_MAX_TOKENS,
        prompt,
    )


def _parse(
    body: dict[str, Any],
    api: Api,
    default_model: str,
    prompt: str,
    prompt_tokens: int,
    default_max_tokens: int | None,
    identity: object,
) -> Generation:
    model = body.get("model", default_model)
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model must be a non-empty string")
    # Chat calls it max_completion_tokens now; max_tokens is the older, still-accepted name.
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", default_max_tokens))
    if max_tokens is not None and not (
        isinstance(max_tokens, int)
        and not isinstance(max_tokens, bool)
        and 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise InvalidRequest(f"max_tokens must be an integer 1-{MAX_TOKENS_LIMIT}")
    n = body.get("n", 1)
    if n != 1:
        raise InvalidRequest("n must be 1 (the sample generates one choice)")
    stream = _flag(body, "stream")
    ignore_eos = _flag(body, "ignore_eos")
    if ignore_eos and max_tokens is None:
        raise InvalidRequest("ignore_eos needs max_tokens (else the generation never ends)")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidRequest("stream_options must be an object")
    include_usage = bool(options.get("include_usage", False))
    request_id = hashlib.sha256(
        json.dumps([api, model, identity], sort_keys=True).encode()
    ).hexdigest()[:24]
    return Generation(
        api=api,
        model=model,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        ignore_eos=ignore_eos,
        stream=stream,
        include_usage=include_usage and stream,
        request_id=request_id,
    )


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key} must be true or false")
    return value


def _is_message(value: object) -> bool:
    return isinstance(value, dict) and isinstance(value.get("content"), str)
