"""OpenAI's chat-completions request as its clients really send it: what the server honours, ignores or refuses.

The official ``openai`` client, and the tools built on it (LangChain, LiteLLM, editors' assistants), send
more than ``model`` and ``messages``: content as a list of parts, a ``name`` on a message, the newer
``developer`` role, ``null`` for every option left unset, and options such as ``seed`` or ``user``. A
server that answers 422 to any of them breaks those tools, so ``ChatBody`` takes OpenAI's whole
request schema and sorts each field into one of three groups:

- **honoured**: ``messages`` (text content, as a string or a list of text parts, joined by newlines),
  ``developer`` messages (read as ``system``: OpenAI's newer name for the same turn), ``temperature``,
  ``top_p``, ``seed`` (a sampled answer repeats for the same seed, whatever shares its batch), ``stop``,
  ``max_tokens`` / ``max_completion_tokens``, ``stream`` and ``stream_options.include_usage`` (a last
  chunk with the token counts);
- **accepted and ignored**, because they change nothing here or the engine cannot do them:
  ``name`` on a message (the chat template has no place for it), ``user``, ``metadata``, ``store``,
  ``presence_penalty`` / ``frequency_penalty`` / ``logit_bias``
  (the engine has no additive penalties: transformers' ``repetition_penalty`` is a different formula,
  and a wrong imitation would be worse than none), ``parallel_tool_calls`` (only means something with
  tools), ``response_format`` ``{"type": "text"}`` (what every answer is), and fields outside
  OpenAI's schema (vendor options sent through ``extra_body``);
- **refused with 400** and a sentence naming the field, because ignoring them would hand the client
  a wrong answer: ``n`` other than 1, ``tools`` / ``functions`` / a forced ``tool_choice``, ``tool``
  and ``function`` messages, ``logprobs``, a JSON ``response_format``, image, audio or file parts,
  and audio output.

A malformed request (a wrong type, a missing field, a role OpenAI does not have) is a 422, as for
``/generate``; a well-formed one asking for something this server cannot do is a 400, as OpenAI answers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TEXT_ONLY = "this model reads text only"


class Unsupported(ValueError):
    """A well-formed request that asks for something this server cannot do; the app answers 400 with it."""


class Sampling(BaseModel):
    """The sampling settings ``/generate`` and ``/v1/chat/completions`` share."""

    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] | str | None = None
    seed: int | None = Field(None, ge=-2**63, lt=2**64)  # temperature > 0: same seed, same answer (torch's range)

    def stops(self) -> tuple[str, ...]:
        """The stop strings, without empty ones: an empty string is "found" at once and would cut every answer."""
        found = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return tuple(s for s in found if s)


class ContentPart(BaseModel):
    """One part of a message's content list. Text (and an assistant's refusal) is read; any other type
    (``image_url``, ``input_audio``, ``file``) is refused later with a 400, since the model reads text only."""

    model_config = ConfigDict(extra="allow")  # an image part carries image_url, a tool may add cache hints
    type: str
    text: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def has_its_text(self):
        if self.type == "text" and self.text is None:
            raise ValueError("a part of type 'text' needs a 'text' string")
        if self.type == "refusal" and self.refusal is None:
            raise ValueError("a part of type 'refusal' needs a 'refusal' string")
        return self


class ChatMessage(BaseModel):
    """One message of OpenAI's ``messages`` list, in any of its roles (the unsupported ones are refused
    by ``ChatBody.chat`` with a 400 that names them, not here with a 422 that would read like a typo)."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # OpenAI uses it to tell participants apart; ChatML has no place for it: ignored
    refusal: str | None = None  # an assistant turn that refused (content is then null)
    tool_calls: list[dict] | None = None
    function_call: dict | None = None
    tool_call_id: str | None = None
    audio: dict | None = None

    @model_validator(mode="after")
    def has_content(self):
        # Only an assistant turn may come without content (it then refused, or called a tool)
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a '{self.role}' message needs 'content' (a string or a list of text parts)")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = None  # honoured: a last chunk, with no choices, carries the token counts
    include_obfuscation: bool | None = None  # padding against side channels on OpenAI's side: nothing to do here


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")  # json_schema's schema: refused with its type
    type: str


class ChatBody(Sampling):
    """OpenAI's chat-completions body (the module docstring sorts its fields). Fields outside OpenAI's
    schema are ignored, as OpenAI-compatible servers do, so that vendor options sent by a tool do no harm."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    # accepted and ignored (see the module docstring for why each one changes nothing here)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # refused unless they ask for nothing (checked by refuse_unsupported)
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    functions: list[dict] | None = None
    function_call: str | dict | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    modalities: list[str] | None = None
    audio: dict | None = None

    @model_validator(mode="before")
    @classmethod
    def null_means_unset(cls, data):
        """OpenAI's clients send ``null`` for an option the caller set to None; OpenAI reads it as "use
        the default", so drop it here instead of refusing ``"temperature": null`` as not a number."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    def usage_in_stream(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def refuse_unsupported(self):
        """Raise ``Unsupported`` naming the first field that asks for something this server cannot do."""
        for wrong, sentence in _unsupported(self):
            if wrong:
                raise Unsupported(sentence)

    def chat(self) -> list[dict]:
        """The messages as the chat template reads them: {"role", "content": str}; raises ``Unsupported``."""
        return [_plain(message, i) for i, message in enumerate(self.messages)]


def _unsupported(body: ChatBody) -> list[tuple[bool, str]]:
    """(is it asked for, the sentence that refuses it) for every option the server cannot honour."""
    tool_choice = _named(body.tool_choice, "a named tool")
    function_call = _named(body.function_call, "a named function")
    answer_type = body.response_format.type if body.response_format else "text"
    return [
        (body.n is not None and body.n != 1, f"n is {body.n}: this server returns one answer per request; "
                                             "leave n out or set it to 1."),
        (bool(body.tools), "tools: this server's model does not call tools (function calling is not "
                           "supported); leave 'tools' out."),
        (bool(body.functions), "functions: this server's model does not call functions; leave 'functions' out."),
        (tool_choice not in (None, "none", "auto"), f"tool_choice is {tool_choice!r}, but this server calls no tools; "
                                              "leave tool_choice out or set it to 'none'."),
        (function_call not in (None, "none", "auto"), f"function_call is {function_call!r}, but this server calls no "
                                                "functions; leave function_call out."),
        (bool(body.logprobs), "logprobs: this server does not return token log-probabilities; leave logprobs "
                              "out or set it to false."),
        (bool(body.top_logprobs), "top_logprobs: this server does not return token log-probabilities; leave "
                                  "top_logprobs out."),
        (answer_type != "text", f"response_format type {answer_type!r} is not supported: this server does not "
                                "constrain answers to JSON; leave response_format out or use {'type': 'text'}."),
        (any(m != "text" for m in body.modalities or ()), f"modalities is {body.modalities}: {TEXT_ONLY}; "
                                                          "ask for ['text'] or leave modalities out."),
        (body.audio is not None, f"audio: {TEXT_ONLY} and cannot answer with audio; leave 'audio' out."),
    ]


def _named(choice, what: str) -> str | None:
    """A tool_choice / function_call as words: "none", "auto", "required", or WHAT for {"function": ...}."""
    return choice if choice is None or isinstance(choice, str) else what


def _plain(message: ChatMessage, index: int) -> dict:
    """MESSAGE as {"role", "content": str}: developer -> system, text parts joined; anything else refused."""
    where = f"messages[{index}]"
    if message.role in ("tool", "function"):
        raise Unsupported(f"{where} has role '{message.role}', which carries a tool's result; this server "
                          "calls no tools, so it has none to read. Send that text in a 'user' message instead.")
    if message.tool_calls or message.function_call:
        field = "tool_calls" if message.tool_calls else "function_call"
        raise Unsupported(f"{where}.{field}: this server's model does not call tools, so a conversation "
                          "cannot hold its tool calls; send the assistant's text as 'content' instead.")
    if message.audio is not None:
        raise Unsupported(f"{where}.audio: {TEXT_ONLY}; send the assistant's answer as text 'content'.")
    role = "system" if message.role == "developer" else message.role  # OpenAI's newer name for the system turn
    return {"role": role, "content": _text(message, where)}


def _text(message: ChatMessage, where: str) -> str:
    """The message's text. A list of parts is joined with newlines: each part is a separate block of the
    turn, and joining them with nothing could glue two words together (vLLM joins them the same way)."""
    if isinstance(message.content, str):
        return message.content
    if message.content is None:  # an assistant turn with no content: it refused (or said nothing)
        return message.refusal or ""
    texts = []
    for j, part in enumerate(message.content):
        if part.type not in ("text", "refusal"):
            raise Unsupported(f"{where}.content[{j}] is a part of type '{part.type}': {TEXT_ONLY}; "
                              "send parts of type 'text' only.")
        texts.append(part.text if part.type == "text" else part.refusal)
    return "\n".join(texts)
