"""Figures 1-3: the course trainer against a naive Trainer and its peers, its MFU, the number formats,
and the memory ladder.

The trainer comparison trains the SAME model (full fine-tuning), on the SAME examples (the same
shuffled selection of the persona split, tokenized once by ``course_lib.train.build_datasets``,
with the same answer-only labels), for the SAME number of steps, each run in a fresh process:

- course: ``course_lib.train.train`` as the notebooks call it (padding-free batches from
  ``batches.FlatCollator``, the device's precision from ``train.precision_flags``);
- naive: a plain ``transformers.Trainer`` with default ``TrainingArguments`` (fp32, linear schedule,
  its default learning rate 5e-5), every example padded to ``max_length`` (512) by
  ``DataCollatorForSeq2Seq``, which pads labels with -100: the loss is over the same answer tokens.

Useful tokens/s = the real (non-padding) tokens of the training examples / training seconds
(Trainer's ``train_runtime``), identical numerators for both runs, so the speedup is the ratio of
their training times. Validation loss is measured the same way after both runs: mean negative
log-likelihood per answer token over the same validation examples, one example at a time.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bench.common import matmul_peak_gflops, ratio, run_worker


def validation_loss(model, examples) -> float:
    """Token-weighted mean NLL of the answer tokens of EXAMPLES (no padding, one at a time)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            ids = torch.tensor([ex["input_ids"]], device=model.device)
            labels = torch.tensor([ex["labels"]], device=model.device)
            n = int((labels[0, 1:] != -100).sum())
            if n:
                total += model(input_ids=ids, labels=labels).loss.item() * n
                count += n
    return total / count if count else float("nan")


def _config(args):
    from course_lib.train import TrainConfig

    return TrainConfig(model=args.model, method="full", max_examples=args.examples, max_val_examples=args.val_examples,
                       batch_size=args.batch_size, max_steps=math.ceil(args.examples / args.batch_size),
                       learning_rate=5e-5, max_length=args.max_length, save_every="no", logging_steps=1000,
                       output_dir=str(Path(args.run_dir) / "bench" / f"train-{args.mode}"))


def _course(args) -> dict:
    from course_lib import models, runs, train

    cfg = _config(args)
    result = train.train(cfg, run_dir=args.run_dir)
    tokenizer = models.load_tokenizer(args.model)
    train_tok, val_tok, _ = train.build_datasets(cfg, tokenizer, Path(args.run_dir))
    trained, _ = runs.load(result.adapter_dir)
    config = trained.config
    return {"seconds": result.train_seconds, "tokens": sum(train_tok["length"]),
            "trained_tokens": sum(sum(l != -100 for l in labels[1:]) for labels in train_tok["labels"]),
            "head_parameters": config.vocab_size * config.hidden_size,
            "val_loss": validation_loss(trained, val_tok), "parameters": result.total_params,
            "precision": _precision_name(train.precision_flags(cfg.precision, models.pick_device()))}


def _precision_name(flags: dict) -> str:
    return "bf16" if flags["bf16"] else "fp16" if flags["fp16"] else "fp32"


def _baseline_inputs(args):
    """What every baseline starts from: the course run's config, a tokenizer that can pad, the same
    tokenized examples, and a freshly loaded fp32 model."""
    from transformers import AutoModelForCausalLM

    from course_lib import models, train

    cfg = _config(args)
    tokenizer = models.load_tokenizer(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_tok, val_tok, _ = train.build_datasets(cfg, tokenizer, Path(args.run_dir))
    location, kwargs = models.model_location(args.model)
    model = AutoModelForCausalLM.from_pretrained(location, dtype="float32", **kwargs)
    return cfg, tokenizer, train_tok, val_tok, model


def _baseline_result(trainer, train_tok, val_tok, precision: str) -> dict:
    """Train a baseline and report it as the course run is reported (useful tokens, the same validation loss)."""
    from course_lib import models

    output = trainer.train()
    return {"seconds": output.metrics["train_runtime"], "tokens": sum(train_tok["length"]),
            "val_loss": validation_loss(trainer.model, val_tok), "parameters": models.count_parameters(trainer.model),
            "precision": precision}


def _naive(args) -> dict:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    cfg, tokenizer, train_tok, val_tok, model = _baseline_inputs(args)
    trainer = Trainer(
        model=model, train_dataset=train_tok.select_columns(["input_ids", "labels"]),
        args=TrainingArguments(output_dir=cfg.output_dir, per_device_train_batch_size=cfg.batch_size,
                               max_steps=cfg.max_steps, report_to=[], save_strategy="no", disable_tqdm=True),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=cfg.max_length))
    return _baseline_result(trainer, train_tok, val_tok, "fp32")


def _peer_arguments(cfg, device: str) -> dict:
    """The course run's TrainingArguments settings (schedule, precision, seed), for the peer baselines."""
    from course_lib import train

    return dict(output_dir=cfg.output_dir, per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps,
                learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup,
                lr_scheduler_type=cfg.scheduler, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
                report_to=[], save_strategy="no", disable_tqdm=True,
                **train.precision_flags(cfg.precision, device))


def _peer(args) -> dict:
    """What a learner would write instead of the course trainer, with the course run's settings:

    - ``trl_sft``: TRL's ``SFTTrainer`` with padding-free batches. It gets the course's tokenized
      rows (input_ids and answer-only labels, so the very same tokens and loss mask); given
      ``prompt``/``completion`` records it would build the same mask itself (completion-only loss).
    - ``dynamic``: ``transformers.Trainer`` padding each batch to its longest example
      (``DataCollatorForSeq2Seq``) and batching examples of similar length together
      (``train_sampling_strategy="group_by_length"``, the old ``group_by_length=True``).
    """
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from course_lib import models

    cfg, tokenizer, train_tok, val_tok, model = _baseline_inputs(args)
    model.config.use_cache = False
    settings = _peer_arguments(cfg, models.pick_device())
    if args.mode == "trl_sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, processing_class=tokenizer,
                             train_dataset=train_tok.select_columns(["input_ids", "labels"]),
                             # max_length=None: the rows are already cut to the course's max_length
                             args=SFTConfig(**settings, padding_free=True, completion_only_loss=True, max_length=None))
    else:
        trainer = Trainer(model=model, train_dataset=train_tok.select_columns(["input_ids", "labels", "length"]),
                          args=TrainingArguments(**settings, train_sampling_strategy="group_by_length",
                                                 remove_unused_columns=True),
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest"))
    return _baseline_result(trainer, train_tok, val_tok, _precision_name(settings))


def worker(argv=None) -> int:
    parser = argparse.ArgumentParser()
    for name, kind in (("mode", str), ("model", str), ("examples", int), ("val_examples", int),
                       ("batch_size", int), ("max_length", int), ("run_dir", str), ("json", str)):
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, required=True)
    args = parser.parse_args(argv)
    from course_lib.report import quiet_libraries

    quiet_libraries()
    import torch

    # The peak is measured in this process too, right before and after training, at its thread
    # count: on a shared machine, a peak taken minutes apart from the training it divides can
    # come from a busier (or quieter) moment.
    threads = torch.get_num_threads()
    before = matmul_peak_gflops(threads)
    result = {"course": _course, "naive": _naive, "trl_sft": _peer, "dynamic": _peer}[args.mode](args)
    result["peak_gflops"] = max(before, matmul_peak_gflops(threads))
    Path(args.json).write_text(json.dumps(result))
    return 0


MODES = ("naive", "trl_sft", "dynamic", "course")


def trainer(model: str, run_dir, threads: int, examples: int = 32, val_examples: int = 16, batch_size: int = 8,
            max_length: int = 512, rounds: int = 2) -> dict:
    """Figures 1 and 2: the naive, peer and course runs in turns (A B C D A B C D), the best time of
    each, and MFU against the fp32 peak and against the best peak of any precision."""
    import torch

    settings = dict(model=model, examples=examples, val_examples=val_examples, batch_size=batch_size,
                    max_length=max_length, run_dir=str(run_dir))
    runs = {mode: [] for mode in MODES}
    peaks = [matmul_peak_gflops(threads)]
    for _ in range(rounds):
        for mode in MODES:
            runs[mode].append(run_worker("bench.training", {"mode": mode, **settings}, threads))
        peaks.append(matmul_peak_gflops(threads))
    best = {mode: min(done, key=lambda r: r["seconds"]) for mode, done in runs.items()}
    naive, course = best["naive"], best["course"]
    tokens_per_s = course["tokens"] / course["seconds"]
    flops_per_token = 6 * course["parameters"]  # full fine-tuning: forward 2N + backward 4N
    peak = max(peaks + [r["peak_gflops"] for mode in runs.values() for r in mode])
    # bf16 can be the faster format (AMX): MFU against the best rate of any precision the device has.
    # Sizes up to 1024 only: where bf16 has no fast kernel, a 2048^3 product takes tens of seconds.
    bf16_peak = matmul_peak_gflops(threads, sizes=(256, 512, 1024), repeats=3, dtype=torch.bfloat16)
    # The course computes the output layer only where a token is trained on (batches.FlatCollator):
    # the FLOPs it really executes are fewer than 6N per token; their rate is the hardware's utilization.
    executed = 6 * ((course["parameters"] - course["head_parameters"]) * course["tokens"]
                    + course["head_parameters"] * course["trained_tokens"])
    return {
        "trainer_hardware_utilization": executed / course["seconds"] / (peak * 1e9),
        "trainer_speedup": ratio(naive["seconds"], course["seconds"]),
        "trainer_tokens_per_s": tokens_per_s, "naive_tokens_per_s": naive["tokens"] / naive["seconds"],
        "trainer_val_loss": course["val_loss"], "naive_val_loss": naive["val_loss"],
        "val_loss_rel_diff": abs(course["val_loss"] - naive["val_loss"]) / naive["val_loss"],
        "trainer_mfu": flops_per_token * tokens_per_s / (peak * 1e9),
        "matmul_peak_gflops": peak, "model_parameters": course["parameters"], "train_examples": examples,
        "train_tokens": course["tokens"], "padded_tokens": examples * max_length,
        "trainer_rounds": rounds, "course_precision": course["precision"],
        "mfu_best_peak": flops_per_token * tokens_per_s / (max(peak, bf16_peak) * 1e9),
        "matmul_peak_gflops_bf16": bf16_peak,
        **_peers(best),
    }


def _peers(best: dict) -> dict:
    """The course trainer's speed against what a learner would write: TRL's SFTTrainer and a
    dynamically padded, length-grouped Trainer (same examples, steps, schedule and precision)."""
    course = best["course"]
    out = {}
    for mode, name, speed_key in (("trl_sft", "trl", "trainer_vs_trl_sft"),
                                  ("dynamic", "dynamic", "trainer_vs_dynamic_padding")):
        peer = best[mode]
        out[speed_key] = ratio(peer["seconds"], course["seconds"])
        out[f"{name}_tokens_per_s"] = peer["tokens"] / peer["seconds"]
        out[f"{name}_val_loss"] = peer["val_loss"]
        out[f"val_loss_rel_diff_{name}"] = abs(course["val_loss"] - peer["val_loss"]) / peer["val_loss"]
    return out


def precision_speeds(model: str, seq_len: int = 64, batch_size: int = 4, steps: int = 2, new_tokens: int = 16) -> dict:
    """What ``precision="auto"`` would pick here and each format's training and generation speed:
    ``course_lib.precision_speed.measure`` with every format timed, even one whose probe is slower."""
    from course_lib import precision, precision_speed

    measured = precision_speed.measure(model, always=True, seq_len=seq_len, batch_size=batch_size, steps=steps,
                                       new_tokens=new_tokens)
    out = {"precision_choice": precision.choose(measured)}
    for fmt, m in measured.items():
        key = fmt.replace("-", "_")
        out[f"train_tokens_per_s_{key}"] = m["train_tokens_per_s"]
        out[f"generate_tokens_per_s_{key}"] = m["generate_tokens_per_s"]
        out[f"first_step_loss_{key}"] = m["loss"]
        out[f"probe_speedup_{key}"] = m["probe_speedup"]
    return out


def memory_ladder(model: str, threads: int, seq_len: int = 256, batch_size: int = 4, steps: int = 3) -> dict:
    """Figure 3: peak memory and tokens/s of full, LoRA, QLoRA, and LoRA with checkpointing.

    Each rung in a fresh process (``course_lib.memory.measure_peak``: the course's own
    measurement, a few AdamW steps of the course's ``prepare_model``), one after another at the
    same thread count so that their speeds compare.
    """
    from course_lib import memory

    rungs = {"full": ("full", False), "lora": ("lora", False), "qlora": ("qlora", False),
             "lora_gc": ("lora", True)}
    got = {}
    for name, (method, checkpointing) in rungs.items():
        m = memory.measure_peak(model, method, seq_len, batch_size, steps, gradient_checkpointing=checkpointing,
                                threads=threads)
        got[name] = {"peak_mb": m["peak_mb"],
                     "tokens_per_s": seq_len * batch_size * steps / max(m["seconds"] - m["load_seconds"], 1e-9)}

    def pair(a, b):
        return {"mem": ratio(got[a]["peak_mb"], got[b]["peak_mb"]),
                "speed": ratio(got[a]["tokens_per_s"], got[b]["tokens_per_s"])}

    out = {}
    for key, (a, b) in {"lora_over_full": ("lora", "full"), "qlora_over_lora": ("qlora", "lora"),
                        "gc_over_no_gc": ("lora_gc", "lora")}.items():
        p = pair(a, b)
        out[f"mem_{key}"], out[f"speed_{key}"] = p["mem"], p["speed"]
    out["memory_rungs"] = got
    return out


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["worker"]:
        raise SystemExit(worker(sys.argv[2:]))
    raise SystemExit("usage: python -m bench.training worker ... (called by bench/run.py)")
