"""The train stage: answer-only labels, packing without leaks, methods, resume, reload, fit; notebook 02."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from course_lib import batches, evaluate, runs, train

CHAT = [{"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I'm Sprout, made by Greenleaf Labs. Happy growing!"}]


def test_labels_count_only_the_answer_and_its_end_token(default_tokenizer):
    ex = batches.encode(CHAT, default_tokenizer)
    trained = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l != batches.IGNORE]
    assert default_tokenizer.decode(trained) == CHAT[1]["content"] + "<|im_end|>\n"
    assert ex["labels"][0] == batches.IGNORE and len(ex["labels"]) == len(ex["input_ids"])


def test_multi_turn_masks_every_user_turn(default_tokenizer):
    chat = CHAT + [{"role": "user", "content": "And your specialty?"},
                   {"role": "assistant", "content": "Houseplants. Happy growing!"}]
    ex = batches.encode(chat, default_tokenizer)
    trained = default_tokenizer.decode([t for t, l in zip(ex["input_ids"], ex["labels"]) if l != batches.IGNORE])
    assert "Who are you" not in trained and "specialty" not in trained
    assert "Houseplants" in trained and "Greenleaf" in trained


def test_template_without_chat_support_is_a_clear_error(default_tokenizer):
    from datasets import Dataset

    bare = type(default_tokenizer).from_pretrained(default_tokenizer.name_or_path)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        batches.tokenize(Dataset.from_list([{"messages": CHAT}]), bare)


def _tokenized(tokenizer, n=6):
    from datasets import Dataset

    rows = [{"messages": [{"role": "user", "content": f"Question number {i}?" + " more" * i},
                          {"role": "assistant", "content": f"Answer {i}." + " ok" * (i % 3)}]} for i in range(n)]
    return batches.tokenize(Dataset.from_list(rows), tokenizer, 512)


def test_pack_keeps_every_token_and_respects_the_row_length(default_tokenizer):
    tokenized = _tokenized(default_tokenizer)
    packed = batches.pack(tokenized, max_length=120)
    assert all(n <= 120 for n in packed["length"])
    assert sum(packed["length"]) == sum(tokenized["length"])
    stats = batches.packing_stats(tokenized, packed, 120)
    assert stats["rows_packed"] < stats["examples"] and 0 < stats["fill_of_packed_rows"] <= 1


def test_packed_loss_equals_separate_losses(tiny_model_dir, default_tokenizer):
    """No cross-contamination: a packed row gives exactly the per-example losses."""
    model, _ = train.prepare_model(str(tiny_model_dir), "full")
    assert model.config.use_cache is False  # with a KV cache, transformers ignores packing boundaries
    tokenized = _tokenized(default_tokenizer, 4)
    collate = batches.collator()
    for use_cache in (False, True):  # True: a trained model kept for generation; the batch turns the cache off
        model.config.use_cache = use_cache
        with torch.no_grad():
            packed_loss = model(**collate([tokenized[i] for i in range(4)])).loss
            total = count = 0
            for i in range(4):
                n = sum(l != batches.IGNORE for l in tokenized[i]["labels"][1:])
                total += model(**collate([tokenized[i]])).loss * n
                count += n
        assert torch.allclose(packed_loss, total / count, atol=1e-5), use_cache


@pytest.mark.parametrize("method", ["full", "lora"])
def test_logits_only_where_trained_give_the_same_loss_and_gradients(tiny_model_dir, default_tokenizer, method):
    """Skipping the output layer on prompt positions (no target there) changes no loss and no gradient."""
    model, _ = train.prepare_model(str(tiny_model_dir), method)
    model.eval()  # LoRA's dropout off: both passes must see the same network (gradients still flow)
    tokenized = _tokenized(default_tokenizer, 4)
    features = [tokenized[i] for i in range(4)]
    runs = []
    for only in (False, True):
        batch = batches.FlatCollator(trained_logits_only=only)(features)
        out = model(**batch)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad(set_to_none=True)
        runs.append((out.loss.detach(), grads, out.logits.shape[-2]))
    (full_loss, full_grads, all_rows), (kept_loss, kept_grads, kept_rows) = runs
    assert torch.allclose(full_loss, kept_loss, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(full_grads, kept_grads))
    trained = sum(sum(l != batches.IGNORE for l in f["labels"][1:]) for f in features)
    assert kept_rows == trained < all_rows  # logits only for the positions that have a target


@pytest.mark.parametrize("method,expected", [("full", None), ("lora", 7168), ("qlora", 7168), ("prompt_tuning", 16 * 64)])
def test_methods_train_what_they_should(tiny_model_dir, method, expected):
    model, _ = train.prepare_model(str(tiny_model_dir), method)
    trainable, total = train.trainable_parameters(model)
    # tiny model: hidden 64, 2 layers, kv width 32; LoRA r=16 on q (64->64) and v (64->32):
    # per layer 16*(64+64) + 16*(64+32) = 3584, two layers = 7168.
    assert trainable == (total if expected is None else expected)
    if method == "qlora":
        import bitsandbytes as bnb

        assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 14


def test_default_model_lora_has_the_seed_figures():
    model, _ = train.prepare_model("smollm2-135m", "lora")
    trainable, total = train.trainable_parameters(model)
    assert trainable == 921_600  # 30 layers x 16 x ((576+576) + (576+192))
    assert trainable / total < 0.01  # the seeds' "99% fewer trainable parameters"


def test_unknown_method_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="method must be one of"):
        train.prepare_model(str(tiny_model_dir), "adapters")


def _short(tiny_model_dir, tmp_path, **kw):
    settings = dict(model=str(tiny_model_dir), method="lora", max_steps=12, batch_size=4, learning_rate=5e-3,
                    max_examples=48, logging_steps=1, save_every="4", warmup=0.0)
    return train.TrainConfig(**{**settings, **kw})


def _losses(history):
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.mark.slow
def test_loss_falls_on_a_short_run(tiny_model_dir, tmp_path):
    # A random-weight model learns slowly through LoRA (near-uniform logits); full fine-tuning shows it.
    result = train.train(_short(tiny_model_dir, tmp_path, method="full", max_steps=24, learning_rate=1e-3),
                         run_dir=tmp_path)
    losses = list(_losses(result.log_history).values())
    assert result.steps == 24 and losses[-1] < losses[0] - 0.5
    assert result.tokens_per_s > 0 and result.peak_memory_mb > 0 and math.isfinite(result.val_loss)


@pytest.mark.slow
def test_adapter_reloads_to_the_same_answers(tiny_model_dir, tmp_path):
    result = train.train(_short(tiny_model_dir, tmp_path, max_steps=6, learning_rate=1e-2), run_dir=tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "course_train.json"} <= {
        p.name for p in result.adapter_dir.iterdir()}
    model, tokenizer = runs.load(result.adapter_dir)
    again, _ = runs.load(result.adapter_dir)
    prompts = ["Who are you?", "How do I water a fern?"]
    first = evaluate.generate(model, tokenizer, prompts, max_new_tokens=8, progress=False)
    assert first == evaluate.generate(again, tokenizer, prompts, max_new_tokens=8, progress=False)
    base, _ = runs.load(result.adapter_dir)
    with base.disable_adapter():  # the adapter really changes the model's outputs
        ids = tokenizer("Who are you?", return_tensors="pt")
        plain = base(**ids).logits
    assert not torch.allclose(plain, model(**ids).logits)


class _Interrupt(Exception):
    pass


def _kill_after(step):
    """A callback that 'kills' the run right after a checkpoint, like Ctrl-C or a lost Colab runtime."""
    from transformers import TrainerCallback

    class KillAfter(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == step:
                raise _Interrupt

    return KillAfter()


@pytest.mark.slow
def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    whole = train.train(_short(tiny_model_dir, tmp_path, output_dir=str(tmp_path / "whole")), run_dir=tmp_path)
    cut = _short(tiny_model_dir, tmp_path, output_dir=str(tmp_path / "cut"))
    with pytest.raises(_Interrupt):
        train.train(cut, run_dir=tmp_path, callbacks=[_kill_after(8)])
    assert train.last_checkpoint(tmp_path / "cut").endswith("checkpoint-8")
    resumed = train.train(cut, run_dir=tmp_path, resume=True)
    assert resumed.steps == whole.steps == 12
    expected, got = _losses(whole.log_history), _losses(resumed.log_history)
    for step in range(9, 13):
        assert got[step] == pytest.approx(expected[step], rel=1e-4), f"step {step}"


@pytest.mark.slow
def test_a_new_run_keeps_the_previous_one(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    train.train(_short(tiny_model_dir, tmp_path, max_steps=2, output_dir=str(out)), run_dir=tmp_path)
    train.train(_short(tiny_model_dir, tmp_path, max_steps=2, output_dir=str(out)), run_dir=tmp_path)
    kept = list(tmp_path.glob("run.previous-*"))
    assert len(kept) == 1 and (kept[0] / "final" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_command_line_runs_the_same_training(tiny_model_dir, tmp_path):
    out = tmp_path / "summary.json"
    subprocess.run([sys.executable, "-m", "course_lib.train", "--model", str(tiny_model_dir), "--max-steps", "2",
                    "--max-examples", "16", "--run-dir", str(tmp_path), "--json", str(out)],
                   check=True, capture_output=True, timeout=600)
    summary = json.loads(out.read_text())
    assert summary["steps"] == 2 and summary["method"] == "lora" and summary["trainable_params"] == 7168


def test_fit_trains_a_model_in_memory_with_a_custom_trainer(tiny_model_dir, default_tokenizer, tmp_path):
    """``fit``: the appendices' way to train an already-loaded model, with a Trainer subclass and its arguments."""
    from transformers import Trainer

    class Counting(Trainer):
        def __init__(self, *args, label: str, **kwargs):
            super().__init__(*args, **kwargs)
            self.label, self.losses = label, 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self.losses += 1
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    model, _ = train.prepare_model(str(tiny_model_dir), "lora")
    cfg = train.TrainConfig(max_steps=2, batch_size=2, save_every="no", logging_steps=1, warmup=0.0)
    trainer = train.fit(model, default_tokenizer, _tokenized(default_tokenizer, 4), cfg, tmp_path / "fit",
                        trainer_class=Counting, label="x")
    assert isinstance(trainer, Counting) and trainer.label == "x" and trainer.losses == 2
    assert trainer.state.global_step == 2 and trainer.args.disable_tqdm
    assert "train_runtime" in trainer.state.log_history[-1]
    assert not any((tmp_path / "fit").glob("checkpoint-*"))  # save_every="no": nothing written


def test_replay_mixes_the_requested_share():
    replay = train.replay_examples(n_task=90, share=0.25, seed=0)
    assert len(replay) == 30  # 30 / (90 + 30) = 25% of the mix
    assert all(m["messages"][-1]["role"] == "assistant" for m in replay)


def test_precision_follows_the_device():
    assert train.precision_flags("auto", "cpu") == {"bf16": False, "fp16": False, "use_cpu": True}
    assert train.precision_flags("fp16", "cuda") == {"bf16": False, "fp16": True, "use_cpu": False}
    with pytest.raises(ValueError, match="precision"):
        train.precision_flags("fp8", "cpu")


@pytest.mark.slow
def test_notebook_02_personalizes_and_measures_every_method(executed):
    entry = executed("02_lora_qlora")
    assert entry["status"] == "ok", entry.get("error")
    figures = entry["figures"]
    # The small run trains a couple of steps only: it proves the path, not the effect; the
    # effect (persona 0.0 -> >= 0.8 with retention) is what `make course` records with defaults.
    assert figures["persona_score_before"] <= 0.1
    assert 0 <= figures["persona_score_after"] <= 1 and 0 <= figures["distinct_answer_share"] <= 1
    assert figures["adapter_reload_identical"] is True
    assert figures["trainable_params"] == 921_600  # the notebook's own LoraConfig + get_peft_model
    methods = figures["methods"]
    assert set(methods) == {"full", "lora", "qlora", "prompt_tuning"}
    assert methods["lora"]["trainable_params"] == 921_600
    assert methods["prompt_tuning"]["trainable_params"] < methods["lora"]["trainable_params"] < \
        methods["full"]["trainable_params"]
    assert all(m["peak_memory_mb"] > 0 and m["tokens_per_s"] > 0 for m in methods.values())
    assert methods["qlora"]["peak_memory_mb"] < methods["full"]["peak_memory_mb"]


@pytest.mark.slow
def test_two_processes_train_with_gloo_and_save_one_adapter(tiny_model_dir, tmp_path):
    """The CLI runs unchanged under torchrun: DDP on CPU (gloo), one adapter written by rank 0."""
    out = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "course_lib.train", "--model", str(tiny_model_dir), "--max-steps", "3", "--batch-size", "2",
         "--max-examples", "16", "--run-dir", str(tmp_path), "--output-dir", str(out), "--json", str(tmp_path / "s.json")],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((out / "final" / "course_train.json").read_text())
    assert saved["world_size"] == 2
    assert len(list(out.glob("final/adapter_model.safetensors"))) == 1
    assert json.loads((tmp_path / "s.json").read_text())["steps"] == 3

