"""What the served model's users thought of its answers: the ``POST /feedback`` bodies, their file, a reader.

Two shapes, told apart by ``kind`` (the two kinds of data preference tuning learns from, notebook 06):

    {"kind": "thumbs", "prompt": ..., "answer": ..., "rating": "up" | "down"}          -> KTO: one answer, good or bad
    {"kind": "choice", "prompt": ..., "answer_a": ..., "answer_b": ..., "preferred": "a" | "b"}
                                                                                     -> DPO: chosen vs rejected
    (both may carry a "comment")

Each accepted body becomes ONE line of a JSONL file, with ``id``, ``time`` (UTC) and ``model`` (the
served model's name) added. The file is only ever appended to: what users gave is never rewritten or
lost, and a server started on an existing file keeps its lines. ``read`` checks every line with the
same models, so a file edited by hand fails with the line to fix instead of training on garbage.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from course_lib import paths

MAX_CHARS = 8000  # a prompt or an answer longer than this is not a chat turn of this course's models


def _not_blank(text: str) -> str:
    """Refuse text that is only spaces, but keep the text as given: the answer is what the model said."""
    if not text.strip():
        raise ValueError("must not be empty or only spaces")
    return text


Text = Annotated[str, Field(max_length=MAX_CHARS), AfterValidator(_not_blank)]


class Thumbs(BaseModel):
    """A thumbs up or down on one answer (KTO's data: an answer and whether it was good)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["thumbs"]
    prompt: Text
    answer: Text
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=MAX_CHARS)


class Choice(BaseModel):
    """The better of two answers to one prompt (DPO's data: a chosen and a rejected answer)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["choice"]
    prompt: Text
    answer_a: Text
    answer_b: Text
    preferred: Literal["a", "b"]
    comment: str | None = Field(None, max_length=MAX_CHARS)

    @model_validator(mode="after")
    def two_different_answers(self):
        # DPO learns from the difference between the answers: two equal ones teach nothing
        if self.answer_a == self.answer_b:
            raise ValueError("answer_a and answer_b are the same text; a choice needs two different answers")
        return self


Feedback = Annotated[Thumbs | Choice, Field(discriminator="kind")]


class _Stamped(BaseModel):
    """What the server adds to a body before storing it."""

    id: str = Field(pattern="^[0-9a-f]{32}$")
    time: AwareDatetime  # ISO-8601 with its offset: the server writes UTC
    model: str = Field(min_length=1)


class StoredThumbs(Thumbs, _Stamped):
    pass


class StoredChoice(Choice, _Stamped):
    pass


_STORED = TypeAdapter(Annotated[StoredThumbs | StoredChoice, Field(discriminator="kind")])
_LOCK = threading.Lock()  # process-wide: every app (and thread) of this process appends through it
_COUNTS: dict[Path, tuple[int, int]] = {}  # file -> (its size, its lines) after our last write


def default_path() -> Path:
    """``<run dir>/feedback/feedback.jsonl``, where notebook 06 looks for it."""
    return paths.run_dir() / "feedback" / "feedback.jsonl"


def resolve(setting: str) -> Path:
    """The file for ``--feedback-file SETTING`` ("" = the default in the run directory)."""
    return Path(setting).expanduser().resolve() if setting else default_path()


def append(path: Path, body: Thumbs | Choice, model: str) -> tuple[dict, int]:
    """Store BODY as one line of PATH -> (the record, how many lines the file holds now: its records,
    unless someone edited it by hand).

    The whole line goes out in one ``write`` of an append-mode file under a lock, then ``fsync``: two
    requests never interleave, and a record answered 201 survives a crash of the server or the machine.
    """
    record = {"id": uuid.uuid4().hex, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
              "model": model, **body.model_dump(exclude_none=True)}
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    with _LOCK:
        path.parent.mkdir(parents=True, exist_ok=True)
        before = path.stat().st_size if path.exists() else 0
        if before and not _ends_with_newline(path):
            line = b"\n" + line  # a half-written last line stays alone (read() names it), ours stays whole
        with open(path, "ab", buffering=0) as out:  # unbuffered: the single write below is the whole line
            if out.write(line) != len(line):
                raise OSError(f"{path}: the disk took only part of a feedback line (is it full?)")
            os.fsync(out.fileno())
        return record, _count_after(path, before, line)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _count_after(path: Path, before: int, line: bytes) -> int:
    """Lines in PATH now. Counted once, then kept up to date; a file something else changed is counted again."""
    size, lines = _COUNTS.get(path, (-1, 0))
    if size == before:
        lines += line.count(b"\n")
    else:
        with open(path, "rb") as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    _COUNTS[path] = (before + len(line), lines)
    return lines


def read(path) -> list[dict]:
    """Every record of PATH, each checked with the models the server stored it with.

    A missing file is no feedback yet ([]); a line that is not a valid record raises ValueError naming
    ``file:line`` and the field, so a hand-edited file says where to fix it. Blank lines are skipped.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                records.append(_record(line, f"{path}:{number}"))
    return records


def _record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not a JSON line ({error.msg} at column {error.colno})") from None
    try:
        _STORED.validate_python(record)
    except ValidationError as error:  # 'thumbs.rating: Input should be 'up' or 'down'' (the kind, then the field)
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in error.errors())
        raise ValueError(f"{where}: {fields}") from None
    return record


def summary(records: list[dict]) -> dict:
    """Counts a learner checks before preference tuning: how many records of each kind, how many prompts."""
    thumbs = [r for r in records if r["kind"] == "thumbs"]
    return {"records": len(records), "thumbs_up": sum(r["rating"] == "up" for r in thumbs),
            "thumbs_down": sum(r["rating"] == "down" for r in thumbs),
            "choices": sum(r["kind"] == "choice" for r in records),
            "prompts": len({r["prompt"] for r in records})}
