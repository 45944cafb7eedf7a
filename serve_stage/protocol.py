"""OpenAI request bodies (pydantic) and the response bodies built from what the engine made.

Requests: `CompletionRequest` (`POST /v1/completions`) and `ChatCompletionRequest`
(`POST /v1/chat/completions`) with OpenAI's fields and defaults (`max_tokens` 16, temperature 1,
top_p 1, n 1) plus four extensions: `top_k`, `session_id` (continue a session),
`return_token_ids` (each choice gets its generated ids as `token_ids`) and `ignore_eos` (keep
generating past EOS, for load tests). A field OpenAI has but this server does not implement
(`logprobs`, `echo`, penalties, ...) is refused when given, never accepted and ignored; an
unknown field is refused too.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .engine import Choice, Outcome, SamplingParams

# OpenAI fields this server does not implement, with the values that ask for nothing (a
# client may send those; any other value is refused rather than ignored).
NOT_IMPLEMENTED: dict[str, tuple] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
}
MAX_STOP = 4


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """The sampling fields both endpoints share."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, description="extension: the k likeliest tokens only")
    seed: int | None = Field(None, ge=0, le=2**62)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    session_id: str | None = Field(None, description="extension: continue this session")
    return_token_ids: bool = Field(False, description="extension: `token_ids` in each choice")
    ignore_eos: bool = Field(False, description="extension: EOS does not end a choice")

    @model_validator(mode="after")
    def _refuse_unknown(self) -> _GenerationRequest:
        for name, value in (self.model_extra or {}).items():
            if name in NOT_IMPLEMENTED:
                asks_nothing = (  # 0 == False in Python: keep booleans and numbers apart
                    value == v and isinstance(value, bool) == isinstance(v, bool)
                    for v in NOT_IMPLEMENTED[name]
                )
                if not any(asks_nothing):
                    raise ValueError(f"{name}: {value!r} is not supported by this server")
            else:
                raise ValueError(f"{name}: unknown field")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        if self.stop is not None and any(s == "" for s in self.stop_strings()):
            raise ValueError("stop: a stop sequence must not be empty")
        if self.session_id is not None and self.n != 1:
            raise ValueError("n: a session continues one history; n must be 1 with session_id")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def requested_tokens(self) -> int:
        return 16 if self.max_tokens is None else self.max_tokens

    def sampling(self, extra_stop: tuple[str, ...] = ()) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.requested_tokens(),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=self.stop_strings() + extra_stop,
            ignore_eos=self.ignore_eos,
            n=self.n,
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_GenerationRequest):
    """`POST /v1/completions`: `prompt` is a string or a list of token ids."""

    prompt: str | list[int]

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: str | list[int]) -> str | list[int]:
        if not prompt:
            raise ValueError("prompt: empty; give at least one character or token id")
        return prompt


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_GenerationRequest):
    """`POST /v1/chat/completions`; `max_completion_tokens` is the newer name of `max_tokens`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_limit(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None:
                raise ValueError("max_tokens: give max_tokens or max_completion_tokens, not both")
            self.max_tokens = self.max_completion_tokens
        return self


class SessionCreate(BaseModel):
    """`POST /v1/sessions` (the body may be omitted): an id of the client's, or one is made."""

    model_config = ConfigDict(extra="forbid")
    session_id: str | None = None


# ---- responses ----------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ResponseShape:
    """The ids and object names one response (or stream) carries, for either endpoint."""

    def __init__(self, chat: bool, model: str, session_id: str | None, token_ids: bool):
        self.chat, self.model, self.session_id, self.token_ids = chat, model, session_id, token_ids
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices}  # fmt: skip
        if self.session_id is not None:
            body["session_id"] = self.session_id
        return body

    def full(self, outcome: Outcome) -> dict[str, Any]:
        """The whole response of a request that did not stream."""
        choices = [self._full_choice(c) for c in outcome.choices]
        body = self._envelope("chat.completion" if self.chat else "text_completion", choices)
        body["usage"] = usage(outcome.prompt_tokens, outcome.completion_tokens)
        return body

    def _full_choice(self, choice: Choice) -> dict[str, Any]:
        out: dict[str, Any] = {"index": choice.index}
        if self.chat:
            out["message"] = {"role": "assistant", "content": choice.text}
        else:
            out["text"] = choice.text
        out["logprobs"] = None
        out["finish_reason"] = choice.finish_reason
        if self.token_ids:
            out["token_ids"] = list(choice.token_ids)
        return out

    def chunk(
        self,
        index: int,
        text: str | None,
        *,
        finish_reason: str | None = None,
        token_ids: list[int] | None = None,
        first: bool = False,
        with_usage_field: bool = False,
    ) -> dict[str, Any]:
        """One streamed piece of choice `index`: new text, or its end (`finish_reason`)."""
        choice: dict[str, Any] = {"index": index}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        if self.token_ids and token_ids is not None:
            choice["token_ids"] = token_ids
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])
        if with_usage_field:
            body["usage"] = None
        return body

    def usage_chunk(self, outcome: Outcome) -> dict[str, Any]:
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        body["usage"] = usage(outcome.prompt_tokens, outcome.completion_tokens)
        return body
