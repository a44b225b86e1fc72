"""Pretraining from scratch: the shipped corpus, a BPE tokenizer, a tiny Llama that learns; notebook A1."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from course_lib.appendix import pretrain

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "A1_pretraining.ipynb"


def step_cell() -> str:
    """The code cell of notebook A1 that defines ``make_train_step`` (section 4)."""
    cells = ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    return next(c for c in cells if "def make_train_step" in c)


def notebook_step_factory():
    """``make_train_step`` exactly as notebook A1 writes it: the tests train with the learner's code."""
    namespace = {"torch": torch, "pretrain": pretrain, "LEARNING_RATE": 1e-2, "STEPS": 60}
    exec(step_cell(), namespace)
    return namespace["make_train_step"]


def test_the_notebooks_step_does_every_part_of_an_update():
    source = step_cell()
    for call in ("model(**batch).loss", "loss.backward()", "clip_grad_norm_", "optimizer.step()", "scheduler.step()",
                 "optimizer.zero_grad("):
        assert call in source, call


@pytest.fixture(scope="module")
def corpus():
    return pretrain.load_corpus()


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return pretrain.train_tokenizer(corpus[0][:200_000], vocab_size=512)


def test_corpus_is_english_prose_held_out_by_module(corpus):
    train, val = corpus
    assert 300_000 < len(train.encode()) <= 3_000_000 and len(val) > 20_000
    train_lines, val_lines = set(train.splitlines()), set(val.splitlines())
    assert not train_lines & val_lines
    assert sum(line[0].isupper() for line in val_lines) / len(val_lines) > 0.95


def test_missing_corpus_says_how_to_rebuild_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_pretrain_corpus.py"):
        pretrain.load_corpus(tmp_path)
    (tmp_path / "train.txt").write_text("\n")
    with pytest.raises(ValueError, match="train.txt is empty"):
        pretrain.load_corpus(tmp_path)


def test_byte_level_tokenizer_round_trips_anything_and_speaks_chatml(tokenizer):
    for text in ("Return the value.", "naïve café 東京 🙂", "  two  spaces\ttab"):
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    for special in pretrain.SPECIAL_TOKENS:
        assert len(tokenizer(special, add_special_tokens=False)["input_ids"]) == 1
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_blocks_have_the_asked_shape_and_short_text_is_an_error(tokenizer):
    blocks = pretrain.blocks(tokenizer, "One short line of text.\n" * 50, seq_len=16)
    assert blocks.shape[1] == 16 and blocks.shape[0] >= 3
    with pytest.raises(ValueError, match="not one block"):
        pretrain.blocks(tokenizer, "too short", seq_len=64)


def tiny_llama(tokenizer, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int):
    """A randomly initialized Llama like notebook A1's (its config cell), small enough for a unit test."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def test_schedule_warms_up_then_decays_to_a_tenth():
    factor = pretrain.warmup_cosine(100, 10)
    lrs = [factor(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert factor(100) == factor(500) == pytest.approx(0.1)  # past the plan (the scheduler's last step) it stays low


def test_the_notebooks_step_updates_clears_gradients_and_follows_the_schedule(tokenizer):
    model = tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64)
    step = notebook_step_factory()(model, learning_rate=1e-3, steps=20, warmup=4)
    optimizer = next(c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, torch.optim.Optimizer))
    batch = pretrain.blocks(tokenizer, "Return the number of items in the container.\n" * 40, 16)[:2]
    before = [p.detach().clone() for p in model.parameters()]
    factor = pretrain.warmup_cosine(20, 4)
    for k in range(6):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * factor(k))
        assert isinstance(step({"input_ids": batch, "labels": batch}), float)
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True) after each update
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.fixture(scope="module")
def trained(corpus, tokenizer):
    """A 2-layer model pretrained for 60 steps on the real corpus (a few seconds)."""
    torch.manual_seed(0)
    model = tiny_llama(tokenizer, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    train_blocks = pretrain.blocks(tokenizer, corpus[0][:200_000], 64)
    val_blocks = pretrain.blocks(tokenizer, corpus[1][:20_000], 64)
    step = notebook_step_factory()(model, learning_rate=1e-2, steps=60, warmup=5)
    result = pretrain.pretrain(model, tokenizer, train_blocks, val_blocks, step, steps=60, batch_size=16,
                               eval_every=30, prompts=["The function"])
    return model, result


@pytest.mark.slow
def test_pretraining_cuts_held_out_perplexity(trained):
    _, result = trained
    ppl = [row["val_ppl"] for row in result.history]
    assert [row["step"] for row in result.history] == [0, 30, 60]
    assert ppl[0] > 300 and ppl[-1] < ppl[1] < ppl[0] / 2  # a random model starts near the vocabulary size (512)
    assert set(result.samples) == {0, 30, 60} and result.tokens_per_second > 0


@pytest.mark.slow
def test_instruction_tuning_lowers_answer_loss_and_saved_model_reloads(trained, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from course_lib import batches

    model, _ = trained
    records = [{"instruction": f"What is {i} plus one?", "input": "", "output": f"It is {i + 1}."} for i in range(20)]
    examples = pretrain.chat_examples(records, tokenizer)
    answer = tokenizer.decode([t for t, l in zip(examples[0]["input_ids"], examples[0]["labels"]) if l != batches.IGNORE])
    assert answer == "It is 1.<|im_end|>\n"  # only the answer (and its end) is learned
    before = pretrain.answer_loss(model, examples)
    step = notebook_step_factory()(model, learning_rate=3e-3, steps=30, weight_decay=0.0)
    pretrain.instruction_tune(model, tokenizer, examples, step, steps=30, batch_size=8)
    assert pretrain.answer_loss(model, examples) < before / 2
    folder = pretrain.save(model, tokenizer, tmp_path / "tiny")
    again = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([examples[0]["input_ids"]])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, model(ids).logits, atol=1e-5)
    assert AutoTokenizer.from_pretrained(folder).chat_template == pretrain.CHATML


def test_bits_per_byte_is_tokenizer_independent_for_a_uniform_model(tokenizer):
    """A model that predicts uniformly pays log2(vocab) bits per token: per byte, tokens/byte times that."""
    import math

    model = tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # all logits 0: a uniform prediction
    text = "Return the number of items in the container, as an integer.\n" * 20
    blocks = pretrain.blocks(tokenizer, text, 32)
    expected = math.log2(len(tokenizer)) * blocks.numel() / len(tokenizer.decode(blocks.flatten().tolist()).encode())
    assert pretrain.bits_per_byte(model, tokenizer, text, 32) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_notebook_pretrains_and_instruction_tunes(executed):
    entry = executed("A1_pretraining")
    assert entry["status"] == "ok", entry.get("error")
    f = entry["figures"]
    assert f["val_ppl_end"] < f["val_ppl_start"] / 2
    assert f["sft_loss_after"] < f["sft_loss_before"]
    assert 1e6 < f["default_parameters"] and f["parameters"] < f["default_parameters"] / 10
    assert f["default_bits_per_byte"] < f["our_bits_per_byte"]  # what 2T tokens buy


def test_plan_steps_stays_within_its_bounds_and_leaves_the_model_untouched(tokenizer):
    model = tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64)
    blocks = pretrain.blocks(tokenizer, "Return the number of items in the container.\n" * 40, 16)
    before = [p.detach().clone() for p in model.parameters()]
    make_step = notebook_step_factory()
    assert pretrain.plan_steps(make_step, model, blocks, 4, seconds=1e-9, most=10, least=3) == 3
    assert pretrain.plan_steps(make_step, model, blocks, 4, seconds=1e9, most=10, least=3) == 10
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # timed on a copy
