"""``POST /v1/chat/completions`` takes OpenAI's request shapes as real clients send them (over loopback HTTP).

Accepted shapes must give the answer the plain request gives (the default model, decoding greedily:
what the model reads, and any option that is honoured or ignored, shows in the answer itself; the tiny
random model would answer every prompt with the same newlines); refused ones get OpenAI's error shape
with a sentence naming the field. The real ``openai`` client is used where it matters: it is what
serialises a request the way the tools built on it do.
"""

from __future__ import annotations

import json

import httpx
import pytest
from test_serve_app import ThreadServer  # uvicorn in a thread, on a free loopback port

from course_lib import serve
from course_lib.serve import engine as engine_mod

pytestmark = pytest.mark.slow
NAME = "served-chat"
QUESTION = "Name a vegetable."
SYSTEM = "You answer in one word."
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def server():
    engine = engine_mod.load_engine("smollm2-135m")
    config = serve.ServeConfig(safety="off", name=NAME, max_new_tokens=16)
    running = ThreadServer(serve.create_app(engine, config))
    yield running
    running.close()


def _chat(url, messages=None, **fields):
    body = {"model": NAME, "messages": messages or [{"role": "user", "content": QUESTION}], "max_tokens": 12} | fields
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def _answer(response) -> tuple[str, int]:
    """(the answer, prompt tokens) of a 200 in OpenAI's response shape."""
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["object"] == "chat.completion" and reply["model"] == NAME and reply["id"].startswith("chatcmpl-")
    (choice,) = reply["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = reply["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return choice["message"]["content"], usage["prompt_tokens"]


@pytest.fixture(scope="module")
def plain(server):
    """The answer to the plain request (system + user, string contents) every accepted shape is compared with."""
    answer = _answer(_chat(server.url, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]))
    assert len(answer[0]) > 5, answer  # a real answer, so that comparing with it means something
    return answer


# --------------------------------------------------------------------------- accepted shapes


def test_text_parts_developer_role_and_names_read_as_the_plain_chat(server, plain):
    parts = [{"type": "text", "text": "Name a"}, {"type": "text", "text": "vegetable."}]
    joined = _answer(_chat(server.url, [{"role": "user", "content": "Name a\nvegetable."}]))
    assert _answer(_chat(server.url, [{"role": "user", "content": parts}])) == joined, "parts are joined by newlines"
    developer = [{"role": "developer", "content": [{"type": "text", "text": SYSTEM}]},
                 {"role": "user", "content": QUESTION, "name": "ann"}]
    assert _answer(_chat(server.url, developer)) == plain, "developer is system; a name changes nothing"


def test_an_earlier_assistant_turn_may_be_parts_or_a_refusal(server):
    def turns(said: dict) -> list[dict]:
        return [{"role": "user", "content": "Hi"}, {"role": "assistant", **said}, {"role": "user", "content": QUESTION}]

    expected = _answer(_chat(server.url, turns({"content": "Hello."})))
    for said in ({"content": [{"type": "text", "text": "Hello."}], "name": "bot"},
                 {"content": None, "refusal": "Hello."}, {"content": [{"type": "refusal", "refusal": "Hello."}]}):
        assert _answer(_chat(server.url, turns(said))) == expected, said


@pytest.mark.parametrize("fields", [
    {"n": 1}, {"presence_penalty": 0.5, "frequency_penalty": -0.5}, {"logit_bias": {"42": -100}},
    {"user": "ann", "seed": 7, "metadata": {"course": "05"}, "store": False},
    {"response_format": {"type": "text"}}, {"stream_options": {"include_usage": True}},
    {"top_p": 0.9}, {"max_tokens": None, "max_completion_tokens": 12}, {"parallel_tool_calls": False},
    {"tool_choice": "none", "tools": []}, {"logprobs": False}, {"modalities": ["text"]},
    {"temperature": None, "top_p": None, "n": None, "stop": None, "seed": None, "user": None},  # what clients send for unset
    {"top_k": 5, "repetition_penalty": 1.1},  # vendor fields outside OpenAI's schema (extra_body)
], ids=lambda f: ",".join(f))
def test_accepted_options_answer_200_and_change_nothing_they_cannot(server, plain, fields):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    assert _answer(_chat(server.url, messages, **fields)) == plain  # greedy: the ignored options leave it as is


def test_stop_strings_are_honoured_as_a_string_or_a_list(server, plain):
    text = plain[0]
    stop = next(text[i:i + 3] for i in range(len(text) // 2, len(text) - 2) if text[i:i + 3].strip() == text[i:i + 3])
    expected = text[:text.index(stop)].strip()
    for given in (stop, [stop, "never appears"], [stop, ""]):
        response = _chat(server.url, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
                         stop=given)
        assert _answer(response)[0] == expected and response.json()["choices"][0]["finish_reason"] == "stop"


def test_the_openai_client_sends_parts_developer_and_options(server, plain):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed")
    messages = [{"role": "developer", "content": SYSTEM},
                {"role": "user", "content": [{"type": "text", "text": QUESTION}], "name": "ann"}]
    answer = client.chat.completions.create(model=NAME, messages=messages, max_tokens=12, n=1, seed=3, user="ann",
                                            presence_penalty=0.0, response_format={"type": "text"}, stop=None,
                                            metadata={"course": "05"}, store=False)
    assert (answer.choices[0].message.content, answer.usage.prompt_tokens) == plain
    stream = client.chat.completions.create(model=NAME, messages=messages, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == plain[0]
    last = chunks[-1]
    assert last.choices == [] and last.usage.prompt_tokens == plain[1] and last.usage.completion_tokens > 0
    with pytest.raises(openai.BadRequestError, match=r"content\[1\] is a part of type 'image_url': this model reads text only"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"}, IMAGE]}])


def test_a_stream_without_include_usage_has_no_usage_chunk(server):
    response = _chat(server.url, stream=True)
    data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(len(c["choices"]) == 1 and "usage" not in c for c in chunks)


# --------------------------------------------------------------------------- refused shapes


USER = {"role": "user", "content": QUESTION}


@pytest.mark.parametrize("messages, fields, says", [
    (None, {"n": 2}, "n is 2: this server returns one answer per request"),
    (None, {"n": 3, "stream": True}, "n is 3"),
    (None, {"tools": [TOOL]}, "tools: this server's model does not call tools"),
    (None, {"tools": [TOOL], "tool_choice": "auto", "stream": True}, "tools:"),
    (None, {"tool_choice": "required"}, "tool_choice is 'required'"),
    (None, {"tool_choice": {"type": "function", "function": {"name": "weather"}}}, "tool_choice is 'a named tool'"),
    (None, {"functions": [TOOL["function"]]}, "functions: this server's model does not call functions"),
    (None, {"logprobs": True}, "logprobs: this server does not return token log-probabilities"),
    (None, {"top_logprobs": 2}, "top_logprobs"),
    (None, {"response_format": {"type": "json_object"}}, "response_format type 'json_object' is not supported"),
    (None, {"modalities": ["text", "audio"]}, "modalities is ['text', 'audio']: this model reads text only"),
    ([{"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE]}], {},
     "messages[0].content[1] is a part of type 'image_url': this model reads text only"),
    ([{"role": "user", "content": [AUDIO]}], {}, "messages[0].content[0] is a part of type 'input_audio'"),
    ([USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function":
      {"name": "weather", "arguments": "{}"}}]}, {"role": "tool", "content": "sunny", "tool_call_id": "c1"}], {},
     "messages[1].tool_calls: this server's model does not call tools"),
    ([USER, {"role": "tool", "content": "sunny", "tool_call_id": "c1"}], {}, "messages[1] has role 'tool'"),
    ([USER, {"role": "function", "name": "weather", "content": "sunny"}], {}, "messages[1] has role 'function'"),
])
def test_unsupported_requests_get_400_naming_the_field(server, messages, fields, says):
    response = _chat(server.url, messages, **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    assert says in error["message"]


@pytest.mark.parametrize("messages, fields, says", [
    ([{"role": "root", "content": "hi"}], {}, "messages.0.role"),
    ([{"role": "user"}], {}, "a 'user' message needs 'content'"),
    ([{"role": "user", "content": [{"type": "text"}]}], {}, "a part of type 'text' needs a 'text' string"),
    ([{"role": "user", "content": 42}], {}, "messages.0.content"),
    ([], {}, "messages: List should have at least 1 item"),
    (None, {"presence_penalty": 3}, "presence_penalty: Input should be less than or equal to 2"),
    (None, {"temperature": 5}, "temperature"),
    (None, {"max_tokens": 0}, "max_tokens"),
    (None, {"stream_options": "yes"}, "stream_options"),
])
def test_malformed_requests_get_422_naming_the_field(server, messages, fields, says):
    body = {"model": NAME, "messages": [USER] if messages is None else messages} | fields
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 422, response.text
    assert says in response.json()["error"]["message"]


def test_a_chat_body_that_is_not_json_gets_422(server):
    response = httpx.post(f"{server.url}/v1/chat/completions", content=b'{"model": "served-chat", "messages": [',
                          headers={"content-type": "application/json"})
    assert response.status_code == 422 and "the body is not valid JSON" in response.json()["error"]["message"]
