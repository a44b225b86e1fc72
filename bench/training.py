"""Figures 1-3: the course trainer against a naive Trainer, its MFU, and the memory ladder.

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


def _naive(args) -> dict:
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from course_lib import models, train

    cfg = _config(args)
    tokenizer = models.load_tokenizer(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_tok, val_tok, _ = train.build_datasets(cfg, tokenizer, Path(args.run_dir))
    location, kwargs = models.model_location(args.model)
    model = AutoModelForCausalLM.from_pretrained(location, dtype="float32", **kwargs)
    trainer = Trainer(
        model=model, train_dataset=train_tok.select_columns(["input_ids", "labels"]),
        args=TrainingArguments(output_dir=cfg.output_dir, per_device_train_batch_size=cfg.batch_size,
                               max_steps=cfg.max_steps, report_to=[], save_strategy="no", disable_tqdm=True),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=cfg.max_length))
    output = trainer.train()
    return {"seconds": output.metrics["train_runtime"], "tokens": sum(train_tok["length"]),
            "val_loss": validation_loss(model, val_tok), "parameters": models.count_parameters(model),
            "precision": "fp32"}


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
    result = _course(args) if args.mode == "course" else _naive(args)
    result["peak_gflops"] = max(before, matmul_peak_gflops(threads))
    Path(args.json).write_text(json.dumps(result))
    return 0


def trainer(model: str, run_dir, threads: int, examples: int = 32, val_examples: int = 16, batch_size: int = 8,
            max_length: int = 512, rounds: int = 2) -> dict:
    """Figures 1 and 2: naive and course runs in turns (A B A B), the best time of each, and MFU."""
    settings = dict(model=model, examples=examples, val_examples=val_examples, batch_size=batch_size,
                    max_length=max_length, run_dir=str(run_dir))
    runs = {"naive": [], "course": []}
    peaks = [matmul_peak_gflops(threads)]
    for _ in range(rounds):
        for mode in ("naive", "course"):
            runs[mode].append(run_worker("bench.training", {"mode": mode, **settings}, threads))
        peaks.append(matmul_peak_gflops(threads))
    naive = min(runs["naive"], key=lambda r: r["seconds"])
    course = min(runs["course"], key=lambda r: r["seconds"])
    tokens_per_s = course["tokens"] / course["seconds"]
    flops_per_token = 6 * course["parameters"]  # full fine-tuning: forward 2N + backward 4N
    peak = max(peaks + [r["peak_gflops"] for mode in runs.values() for r in mode])
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
    }


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
