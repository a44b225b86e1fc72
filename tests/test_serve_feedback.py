"""``POST /feedback`` over real HTTP on loopback: what users send is stored whole, once, and read back.

One server (the tiny random model: feedback never runs the model) runs in a thread of the test process
for the module, on a feedback file that already holds two records, as a file from an earlier run would.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from test_serve_app import ThreadServer  # uvicorn in a thread, on a free loopback port

from course_lib import serve
from course_lib.serve import engine as engine_mod
from course_lib.serve import feedback

NAME = "tiny-served"
THUMBS = {"kind": "thumbs", "prompt": "What is the capital of France?", "answer": "Paris.", "rating": "up"}
CHOICE = {"kind": "choice", "prompt": "Say hello.", "answer_a": "Hello!", "answer_b": "Go away.",
          "preferred": "a", "comment": "a is friendlier"}
EARLIER = [  # two records an earlier server wrote: a new server must keep them
    {"id": "0" * 32, "time": "2025-01-02T03:04:05.000+00:00", "model": "older", **THUMBS, "rating": "down"},
    {"id": "1" * 32, "time": "2025-01-02T03:04:06.000+00:00", "model": "older", **CHOICE, "preferred": "b"},
]


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    return engine_mod.load_engine(str(tiny_model_dir))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("feedback") / "feedback.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in EARLIER))
    return path


@pytest.fixture(scope="module")
def server(tiny_engine, store):
    config = serve.ServeConfig(safety="off", name=NAME, feedback_file=str(store))
    running = ThreadServer(serve.create_app(tiny_engine, config))
    yield running
    running.close()


def _send(url, body):
    return httpx.post(f"{url}/feedback", json=body, timeout=30)


def _lines(path) -> int:
    return path.read_bytes().count(b"\n")


# --------------------------------------------------------------------------- what is stored


def test_a_thumbs_and_a_choice_are_stored_as_sent(server, store):
    for body in (THUMBS, CHOICE):
        response = _send(server.url, body)
        assert response.status_code == 201, response.text
        reply = response.json()
        records = feedback.read(store)
        assert reply["stored"] == len(records) == _lines(store)
        record = next(r for r in records if r["id"] == reply["id"])
        assert {k: record[k] for k in body} == body and record["model"] == NAME
        assert set(record) == set(body) | {"id", "time", "model"}, "no comment sent, none stored"
        written = datetime.fromisoformat(record["time"])
        assert written.utcoffset() == timedelta(0)
        assert abs(datetime.now(timezone.utc) - written) < timedelta(minutes=1)


def test_a_file_from_before_the_server_keeps_its_lines(server, store):
    assert _send(server.url, THUMBS).status_code == 201
    records = feedback.read(store)
    assert records[:2] == EARLIER and len(records) >= 3


def test_the_summary_counts_what_the_file_holds(server, store):
    assert _send(server.url, CHOICE).status_code == 201
    summary = httpx.get(f"{server.url}/feedback/summary").json()
    records = feedback.read(store)
    assert summary == {"file": str(store), **feedback.summary(records)}
    assert summary["records"] == len(records) and summary["thumbs_down"] >= 1 and summary["choices"] >= 2
    assert summary["thumbs_up"] + summary["thumbs_down"] + summary["choices"] == summary["records"]


# --------------------------------------------------------------------------- bad bodies


@pytest.mark.parametrize("body, says", [
    ({k: v for k, v in THUMBS.items() if k != "answer"}, "answer: Field required"),
    ({**THUMBS, "rating": "meh"}, "rating: Input should be 'up' or 'down'"),
    ({**THUMBS, "prompt": "   "}, "prompt: Value error, must not be empty"),
    ({**THUMBS, "answer": "x" * (feedback.MAX_CHARS + 1)}, "answer: String should have at most 8000 characters"),
    ({**CHOICE, "preferred": "c"}, "preferred: Input should be 'a' or 'b'"),
    ({**CHOICE, "answer_b": CHOICE["answer_a"]}, "answer_a and answer_b are the same text"),
    ({**THUMBS, "kind": "stars"}, "Input tag 'stars' found using 'kind' does not match"),
    ({k: v for k, v in THUMBS.items() if k != "kind"}, "discriminator 'kind'"),
    ({**THUMBS, "stars": 5}, "stars: Extra inputs are not permitted"),
    ({**CHOICE, "answer": "Hello!"}, "answer: Extra inputs are not permitted"),
    (["not", "an", "object"], "valid dictionary"),
])
def test_bad_bodies_get_422_naming_the_field_and_store_nothing(server, store, body, says):
    before = _lines(store)
    response = _send(server.url, body)
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert says in response.json()["error"]["message"]
    assert _lines(store) == before


@pytest.mark.parametrize("raw", [b"kind=thumbs&rating=up", b'{"kind": "thumbs", "prompt": "hi"', b""])
def test_a_body_that_is_not_json_gets_422(server, store, raw):
    before = _lines(store)
    response = httpx.post(f"{server.url}/feedback", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "not valid JSON" in message or "body: Field required" in message  # an empty body is a missing one
    assert _lines(store) == before


# --------------------------------------------------------------------------- many at once


def test_48_concurrent_posts_are_all_stored_whole_and_once(server, store):
    before, clients = len(feedback.read(store)), 48
    start = threading.Barrier(clients)  # all threads post at the same moment, not one after the other

    def post(i):
        start.wait()
        body = {**THUMBS, "prompt": f"question {i} " + "long text " * 200, "rating": "up" if i % 2 else "down"}
        return _send(server.url, body)

    with ThreadPoolExecutor(clients) as pool:
        responses = list(pool.map(post, range(clients)))
    assert [r.status_code for r in responses] == [201] * clients, [r.text for r in responses if r.status_code != 201]
    replies = [r.json() for r in responses]
    # each write saw its own count: the writes were one after another, never two at once
    assert sorted(r["stored"] for r in replies) == list(range(before + 1, before + clients + 1))
    records = feedback.read(store)  # every line parses and validates: nothing interleaved
    assert len(records) == _lines(store) == before + clients
    new = records[before:]
    assert sorted(r["id"] for r in new) == sorted(r["id"] for r in replies)
    assert sorted(int(r["prompt"].split()[1]) for r in new) == list(range(clients))


# --------------------------------------------------------------------------- the default file


def test_the_default_file_is_in_the_run_directory(tiny_engine, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RUN_DIR", str(tmp_path))
    running = ThreadServer(serve.create_app(tiny_engine, serve.ServeConfig(safety="off", name=NAME)))
    try:
        reply = _send(running.url, THUMBS).json()
    finally:
        running.close()
    records = feedback.read(tmp_path / "feedback" / "feedback.jsonl")  # its folder did not exist before
    assert reply["stored"] == 1 and [r["id"] for r in records] == [reply["id"]]


# --------------------------------------------------------------------------- reading the file


def test_read_names_the_line_and_the_field_of_a_broken_record(tmp_path):
    path = tmp_path / "feedback.jsonl"
    path.write_text(json.dumps(EARLIER[0]) + "\n\n" + json.dumps({**EARLIER[1], "preferred": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"feedback.jsonl:3: choice\.preferred: Input should be 'a' or 'b'"):
        feedback.read(path)
    path.write_text(json.dumps(EARLIER[0]) + "\n" + '{"kind": "thumbs", \n')
    with pytest.raises(ValueError, match=r"feedback.jsonl:2: not a JSON line"):
        feedback.read(path)
    path.write_text(json.dumps({k: v for k, v in EARLIER[0].items() if k != "time"}) + "\n")
    with pytest.raises(ValueError, match=r"feedback.jsonl:1: thumbs\.time: Field required"):
        feedback.read(path)


def test_read_of_a_missing_file_is_no_feedback_yet(tmp_path):
    assert feedback.read(tmp_path / "none.jsonl") == []
    assert feedback.summary([]) == {"records": 0, "thumbs_up": 0, "thumbs_down": 0, "choices": 0, "prompts": 0}


def test_a_half_written_last_line_does_not_swallow_the_next_record(tmp_path):
    path = tmp_path / "new" / "feedback.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps(EARLIER[0]) + "\n" + '{"kind": "thum')  # a crash in the middle of a write
    record, stored = feedback.append(path, feedback.Thumbs(**THUMBS), NAME)
    lines = path.read_text().splitlines()
    assert stored == 3 and lines[1] == '{"kind": "thum' and json.loads(lines[2]) == record
    with pytest.raises(ValueError, match="feedback.jsonl:2: not a JSON line"):
        feedback.read(path)
