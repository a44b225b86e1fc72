"""The Ollama Modelfile: read off the tokenizer's chat template, and rendering the same prompt."""

from __future__ import annotations

import re

import pytest

from course_lib.quantize import modelfile


def _render_go(template: str, system: str, messages: list[dict]) -> str:
    """Ollama's rendering of the Go template subset ``ollama_template`` writes, for the test to compare.

    Only ``if .System``, ``range .Messages``, ``if eq .Role "..."`` / ``else if`` and ``.Content``:
    anything else in the template fails the test (Ollama would need a real Go template engine).
    """
    head, rest = template.split("{{ range .Messages }}", 1)
    body, tail = rest.rsplit("{{ end }}", 1)
    assert tail == "", tail
    match = re.fullmatch(r"\{\{ if \.System \}\}(.*)\{\{ \.System \}\}(.*)\{\{ end \}\}", head, re.S)
    assert match, head
    out = match.group(1) + system + match.group(2) if system else ""
    branches = dict(re.findall(r'\{\{ (?:else )?if eq \.Role "(\w+)" \}\}(.*?)(?=\{\{ else if|\{\{ end \}\}$)', body, re.S))
    assert set(branches) == {"user", "assistant"}, branches
    for message in messages:
        out += branches[message["role"]].replace("{{ .Content }}", message["content"])
    return out


CHAT = [{"role": "user", "content": "What should I plant in March?"},
        {"role": "assistant", "content": "Peas and spinach. Happy growing!"},
        {"role": "user", "content": "And tomatoes?"}]


@pytest.fixture(scope="module")
def tokenizer():
    from course_lib import models

    return models.load_tokenizer("smollm2-135m")


def test_the_modelfile_renders_exactly_what_the_tokenizer_renders(tokenizer):
    parts = modelfile.chat_parts(tokenizer)
    template = modelfile.ollama_template(parts)
    expected = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    # no system message in the chat: Ollama fills .System from the Modelfile's SYSTEM line
    assert _render_go(template, parts.default_system, CHAT) == expected
    own = [{"role": "system", "content": "You are Sprout."}, *CHAT]
    assert _render_go(template, "You are Sprout.", CHAT) == \
        tokenizer.apply_chat_template(own, tokenize=False, add_generation_prompt=True)


def test_the_modelfile_names_the_file_the_stops_and_the_trained_system_prompt(tokenizer, tmp_path):
    gguf = tmp_path / "gguf" / "model-q8_0.gguf"
    gguf.parent.mkdir()
    path = modelfile.write_modelfile(gguf, tokenizer)
    text = path.read_text(encoding="utf-8")
    assert path == gguf.parent / "Modelfile" and "FROM ./model-q8_0.gguf\n" in text
    stops = re.findall(r'^PARAMETER stop "(.+)"$', text, re.M)
    assert stops == [tokenizer.eos_token, "<|im_start|>user"]  # SmolLM2's end of turn, and a new user turn
    # the system prompt the persona was trained with: the one the template adds to a chat without one
    system = re.search(r'^SYSTEM """(.*)"""$', text, re.M).group(1)
    assert tokenizer.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True).count(system) == 1
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.M | re.S).group(1)
    assert template == modelfile.ollama_template(modelfile.chat_parts(tokenizer))


def test_a_template_that_drops_the_system_role_is_a_clear_error():
    class NoSystem:
        eos_token = "</s>"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            text = "".join(f"[{m['role']}] {m['content']}\n" for m in messages if m["role"] != "system")
            return text + ("[assistant] " if add_generation_prompt else "")

    with pytest.raises(ValueError, match="dropped a message"):
        modelfile.chat_parts(NoSystem())
