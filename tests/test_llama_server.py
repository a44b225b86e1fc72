"""llama.cpp's own OpenAI-compatible server on a GGUF file, over real HTTP on loopback."""

from __future__ import annotations

import pytest

from course_lib import quantize, serve


@pytest.fixture(scope="module")
def gguf_file():
    from course_lib import models

    missing = quantize.llama_cpp_available()
    if missing:
        pytest.skip(missing)
    return models._gguf_path()  # the offline default model's own GGUF file (SmolLM2-135M-Instruct, Q4_1)


@pytest.mark.slow
def test_the_llama_cpp_server_answers_an_openai_client_and_stops_at_the_end_of_turn(gguf_file):
    from openai import OpenAI

    contents = quantize.gguf_contents(gguf_file)
    assert contents["chat_template"] and contents["eos_token"] == "<|im_end|>"  # what the server formats and stops with
    with serve.LlamaServer(gguf_file) as llama:
        client = OpenAI(base_url=f"{llama.url}/v1", api_key="not-needed")
        reply = client.chat.completions.create(model="any", temperature=0, max_tokens=64,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
    choice = reply.choices[0]
    # the end-of-turn token ended the answer, before max_tokens, and none of the template's markers leaked
    assert choice.finish_reason == "stop" and reply.usage.completion_tokens < 64, reply
    assert choice.message.content.strip() and "<|im" not in choice.message.content
    assert "France" in choice.message.content  # an answer to the question asked (its facts: a 4-bit 135M model's)
    assert llama.process.poll() is not None  # the with block stopped the server


def test_a_server_that_cannot_start_says_so_with_its_log(tmp_path):
    with pytest.raises(RuntimeError, match="exited with code"):
        serve.LlamaServer(tmp_path / "missing.gguf", log_file=tmp_path / "llama.log", wait_s=60)
    assert (tmp_path / "llama.log").read_text().strip()  # the log that says why is kept
