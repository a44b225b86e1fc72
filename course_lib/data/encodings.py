"""Encodings: which bytes are which characters, and what to say when a file is not the encoding asked for.

A file is only bytes; UTF-8 is the course's default, but exports from Chinese Windows tools are GBK,
Windows "Unicode" is UTF-16 and Western Windows tools write cp1252. A wrong guess either fails
(``UnicodeDecodeError``) or, worse, silently turns text into mojibake, so an error here names the
file, the line, what the bytes look like, and the exact call that reads them.
"""

from __future__ import annotations

import codecs

# Tried in this order when a file is not in the encoding asked for: Chinese Windows tools save GBK
# (GB18030 is its superset), Windows "Unicode" is UTF-16, Western Windows tools cp1252; latin-1
# decodes any bytes at all, so it comes last and proves little.
GUESSES = ("gbk", "gb18030", "utf-16", "cp1252", "latin-1")
BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def guess_encoding(data: bytes) -> str:
    """The first of GUESSES that decodes all of DATA: a guess, so errors say "looks like", not "is".

    NUL bytes mean UTF-16 (its ASCII letters are half NULs; GBK or cp1252 text never has them), so
    then it is tried first; without them it is skipped, since any even number of bytes "decodes"
    as UTF-16 into nonsense.
    """
    order = [g for g in GUESSES if g != "utf-16"]
    for name in (["utf-16", *order] if b"\x00" in data else order):
        try:
            data.decode(name)
            return name
        except UnicodeDecodeError:
            continue
    return "latin-1"


def encoding_error(data: bytes, name: str, encoding: str, error: UnicodeDecodeError,
                   call: str = "load_records") -> ValueError:
    """The error for a file that is not ENCODING text: where, what it looks like, and the call that reads it."""
    line = data[: error.start].count(b"\n") + 1
    guess = guess_encoding(data)
    others = ", ".join(g for g in GUESSES if g not in (guess, encoding))
    return ValueError(f"{name}:{line}: not {encoding} text (byte 0x{data[error.start]:02x}): the file was saved in "
                      f"another encoding. It looks like {guess}: read it with {call}(path, encoding=\"{guess}\") "
                      f"(other encodings to try: {others}).")


def encoding_of(data: bytes, encoding: str) -> str:
    """ENCODING, unless the file starts with a byte-order mark: then the file says itself what it is
    (Notepad's "UTF-8 with BOM"; Windows PowerShell 5's ``>`` writes UTF-16), and that wins."""
    return next((name for mark, name in BOMS if data.startswith(mark)), encoding)


def decode(data: bytes, name: str, encoding: str, call: str = "load_records") -> str:
    """DATA as text (a leading BOM honoured and dropped), or the ``encoding_error`` naming NAME and CALL."""
    try:
        return data.decode(encoding_of(data, encoding)).lstrip("\ufeff")
    except UnicodeDecodeError as error:
        raise encoding_error(data, name, encoding, error, call) from None


def decode_lines(data: bytes, name: str, encoding: str) -> list[tuple[int, str, str | None]]:
    """(number, text, problem) per line of DATA: PROBLEM says why a line is not ENCODING text (TEXT is
    then its bytes' repr), or is None.

    When most lines do not decode, the file is in another encoding: one mistake, not a hundred bad
    records, so it raises one ``encoding_error`` saying which encoding it looks like. Split on "\\n"
    only: str.splitlines() would also split on \\r, \\x0b, \\x1c, \\u2028 ... that can hide inside
    a record, and every line number after it would be wrong.
    """
    encoding, first_error = encoding_of(data, encoding), None
    try:
        lines = data.decode(encoding).lstrip("\ufeff").split("\n")
    except UnicodeDecodeError as error:
        if codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")):  # its lines cannot be cut apart as bytes
            raise encoding_error(data, name, encoding, error) from None
        lines, first_error = data.split(b"\n"), error
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last line does not start another one
    out = [_decode_line(number, line, encoding) for number, line in enumerate(lines, start=1)]
    failed = sum(problem is not None for _, _, problem in out)
    if first_error and failed * 2 >= sum(problem is not None or bool(text.strip()) for _, text, problem in out):
        raise encoding_error(data, name, encoding, first_error) from None
    return out


def _decode_line(number: int, line: str | bytes, encoding: str) -> tuple[int, str, str | None]:
    if isinstance(line, str):
        return number, line.rstrip("\r"), None
    try:
        return number, line.decode(encoding).rstrip("\r"), None
    except UnicodeDecodeError as error:
        return number, repr(line), (f"not {encoding} text (byte 0x{line[error.start]:02x} at column {error.start + 1}); "
                                    f"if the whole file is in another encoding: load_records(path, "
                                    f"encoding=\"{guess_encoding(line)}\")")
