"""An Ollama ``Modelfile`` for the GGUF file, built from the tokenizer's own chat template.

A GGUF file loaded into Ollama without a chat ``TEMPLATE`` and ``PARAMETER stop`` lines gets a raw
prompt and never hears where a turn ends: the model rambles on, or writes the next user turn
itself. The fix is to write the same template the model was trained with, in Ollama's Go template
syntax. Typing it by hand is how mistakes creep in, so this module reads it off the tokenizer: it
renders ``apply_chat_template`` with marker strings in place of the messages and keeps the text
around them. (Ollama's template variables: https://github.com/ollama/ollama/blob/main/docs/template.md)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_S, _U, _A, _U2 = "\x01SYSTEM\x01", "\x01USER\x01", "\x01ASSISTANT\x01", "\x01USER2\x01"


@dataclass
class ChatParts:
    """The literal text a chat template puts around each message."""

    system_start: str  # before the system prompt
    system_end: str  # after it, before the first user turn's start
    user_start: str
    user_end: str  # after a user turn, up to where the answer begins (the generation prompt included)
    assistant_end: str  # after an answer
    default_system: str  # the system prompt the template adds when a chat has none ("" if it adds none)


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _between(text: str, start: str, end: str | None) -> str:
    begin = text.index(start) + len(start)
    return text[begin:text.index(end, begin)] if end else text[begin:]


def chat_parts(tokenizer) -> ChatParts:
    """Read the template's pieces by rendering a chat of marker strings (see the module docstring)."""
    system, user, answer, user2 = ({"role": r, "content": c} for r, c in
                                   (("system", _S), ("user", _U), ("assistant", _A), ("user", _U2)))
    full = _render(tokenizer, [system, user, answer, user2], generation_prompt=True)
    if not all(marker in full for marker in (_S, _U, _A, _U2)):
        raise ValueError("the chat template dropped a message (no system role?): write the Modelfile by hand")
    system_start = full[:full.index(_S)]
    turn_change = _between(full, _A, _U2)  # an answer's end, then the next user turn's start
    after_answer = _render(tokenizer, [system, user, answer], generation_prompt=False)
    assistant_end = after_answer[after_answer.index(_A) + len(_A):]
    if not turn_change.startswith(assistant_end):
        raise ValueError(f"cannot split {turn_change!r} into an answer's end and a user turn's start")
    user_start = turn_change[len(assistant_end):]
    system_part = _between(full, _S, _U)
    if not system_part.endswith(user_start):
        raise ValueError(f"cannot split {system_part!r} into the system prompt's end and a user turn's start")
    system_end = system_part[:-len(user_start)]
    plain = _render(tokenizer, [user], generation_prompt=True)  # no system message: does the template add one?
    default = ""
    if system_start and plain.startswith(system_start) and system_end in plain[len(system_start):]:
        default = plain[len(system_start):plain.index(system_end, len(system_start))]
    user_end = _between(full, _U, _A)
    if _between(full, _U2, None) != user_end:  # the last user turn must end as the others do
        raise ValueError(f"the generation prompt differs from an answer's start: {user_end!r}")
    return ChatParts(system_start=system_start, system_end=system_end, user_start=user_start, user_end=user_end,
                     assistant_end=assistant_end, default_system=default)


def stop_words(tokenizer, parts: ChatParts) -> list[str]:
    """Where generation must stop: an answer's end, the end-of-sequence token, or a user turn's start."""
    words = (parts.assistant_end.strip(), tokenizer.eos_token or "", parts.user_start.strip())
    return list(dict.fromkeys(w for w in words if w))  # in order, each once


def ollama_template(parts: ChatParts) -> str:
    """The chat template in Ollama's Go template syntax.

    The system prompt comes from ``.System`` (the Modelfile's ``SYSTEM``, or the request's); the
    ``range`` writes the user and assistant turns, and each user turn ends with the generation prompt.
    No ``{{-`` trimming anywhere: it would also eat the newlines the template needs.
    """
    for text in (parts.system_start, parts.system_end, parts.user_start, parts.user_end, parts.assistant_end):
        if "{{" in text or '"""' in text:
            raise ValueError(f"the template text {text!r} cannot go into a Modelfile as it is")
    return ("{{ if .System }}" + parts.system_start + "{{ .System }}" + parts.system_end + "{{ end }}"
            "{{ range .Messages }}"
            '{{ if eq .Role "user" }}' + parts.user_start + "{{ .Content }}" + parts.user_end +
            '{{ else if eq .Role "assistant" }}{{ .Content }}' + parts.assistant_end + "{{ end }}"
            "{{ end }}")


def modelfile_text(gguf_name: str, tokenizer, system: str | None = None) -> str:
    """The Modelfile: FROM the GGUF file beside it, TEMPLATE, SYSTEM (default: the template's own) and stops."""
    parts = chat_parts(tokenizer)
    system = parts.default_system if system is None else system
    lines = ["# Written by course_lib.quantize.modelfile from the tokenizer's chat template.",
             "# ollama create sprout -f Modelfile   then   ollama run sprout",
             f"FROM ./{gguf_name}", f'TEMPLATE """{ollama_template(parts)}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{word}"' for word in stop_words(tokenizer, parts)]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_file, tokenizer, system: str | None = None) -> Path:
    """Write ``Modelfile`` beside GGUF_FILE (the folder the GGUF variant owns) and return its path."""
    gguf_file = Path(gguf_file)
    path = gguf_file.parent / "Modelfile"
    path.write_text(modelfile_text(gguf_file.name, tokenizer, system), encoding="utf-8")
    return path
