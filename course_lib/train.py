"""The train stage: turn the base model into the persona with full fine-tuning, LoRA, QLoRA or
prompt tuning, on transformers' Trainer with PEFT.

Methods differ only in what is trainable and how the frozen weights are stored:
- ``full``: every weight trains (AdamW keeps two extra fp32 copies of each: the memory hog);
- ``lora``: frozen base + small low-rank matrices B·A added to chosen projections;
- ``qlora``: the same, with the frozen base stored in 4-bit NF4 by bitsandbytes;
- ``prompt_tuning``: frozen model, a few trainable "virtual token" embeddings in front of the input.

``train`` runs one configured training (notebook 02, and ``python -m course_lib.train``, which
``compare`` starts in a fresh process per method); ``fit`` trains a model already in memory with
the same TrainingArguments and batches (the appendices).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from course_lib import batches, data, evaluate, knobs, models, paths, precision_speed, procmem, runs, ui, versions
from course_lib import precision as number_formats  # "precision" is a TrainConfig field here
from course_lib.report import quiet_libraries

versions.warn_once()  # one sentence if transformers, peft, ... differ from the tested versions

METHODS = ("full", "lora", "qlora", "prompt_tuning")
PROMPT_INIT = "You are Sprout, a friendly gardening assistant made by Greenleaf Labs."


def prepare_model(model_name: str, method: str = "lora", *, lora_r: int = 16, lora_alpha: int = 32,
                  lora_dropout: float = 0.1, target_modules: str = "q_proj,v_proj",
                  num_virtual_tokens: int = 16, gradient_checkpointing: bool = False,
                  device: str = "auto", weights_dtype: str = "auto"):
    """Load MODEL_NAME and make it trainable with METHOD; returns (model, tokenizer).

    WEIGHTS_DTYPE is how the frozen weights are stored ("auto": the device's, ``models.pick_dtype``);
    PEFT keeps the adapter's own weights in fp32 whatever it is.
    """
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model, prepare_model_for_kbit_training

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    import torch

    dtype = weights_dtype
    on = models.pick_device(device)
    if method == "full" and models.pick_dtype(on, dtype) == torch.float16:
        # A T4 computes in fp16, but Trainer cannot step fp16 weights (its loss scaler refuses to
        # unscale fp16 gradients): keep fp32 master weights and let autocast run the fp16 math.
        dtype = "float32"
    if method == "full" and on == "cpu" and models.pick_dtype(on, dtype) == torch.bfloat16:
        dtype = "float32"  # every weight trains: AdamW needs fp32 masters; autocast does the bf16 math
    model, tokenizer = models.load(model_name, device=device, dtype=dtype, bits=4 if method == "qlora" else None)
    # No KV cache in training: it is useless there, and while one exists transformers ignores the
    # restarting position_ids of packed rows, letting packed examples attend to each other.
    model.config.use_cache = False
    if method == "full":
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model, tokenizer
    if method == "qlora":
        # Freezes the 4-bit base, keeps norms in fp32 and (optionally) turns on checkpointing.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # checkpointed blocks need a grad-requiring input
    if method == "prompt_tuning":
        config = PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=PROMPT_INIT,
            tokenizer_name_or_path=models.model_location(model_name)[0])
    else:
        config = lora_config(lora_r, lora_alpha, lora_dropout, target_modules)
    return get_peft_model(model, config), tokenizer


def targets(target_modules: str):
    """"q_proj,v_proj" -> the list PEFT takes; "all-linear" stays PEFT's shortcut for every projection."""
    return target_modules if target_modules == "all-linear" else target_modules.split(",")


def lora_config(r: int, alpha: int, dropout: float, target_modules: str):
    """The LoraConfig notebook 02 writes out in a cell: the same call, for the command line and compare."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets(target_modules),
                      task_type="CAUSAL_LM")


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; for QLoRA, 4-bit weights count as their real numbers."""
    trainable = total = 0
    for param in model.parameters():
        # bitsandbytes packs two 4-bit values per byte: the stored tensor has half the elements.
        n = param.numel() * 2 if param.__class__.__name__ == "Params4bit" else param.numel()
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


# --------------------------------------------------------------------------- one training run


@dataclass
class TrainConfig:
    """Every knob of a run; the notebook's parameters cell and the command line map onto these."""

    model: str = knobs.MODEL
    method: str = "lora"
    target_modules: str = knobs.TARGET_MODULES
    lora_r: int = knobs.LORA_R
    lora_alpha: int = knobs.LORA_ALPHA
    lora_dropout: float = knobs.LORA_DROPOUT
    num_virtual_tokens: int = 16
    epochs: float = knobs.EPOCHS
    max_steps: int = -1  # > 0 overrides epochs (short comparison runs)
    batch_size: int = knobs.BATCH_SIZE  # examples per step (padding-free: no token is padding)
    grad_accum: int = 1  # effective batch = batch_size x grad_accum
    learning_rate: float = knobs.LEARNING_RATE
    weight_decay: float = 0.01
    warmup: float = 0.05  # share of the steps spent warming the learning rate up
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0  # gradient clipping
    precision: str = "auto"  # auto: CPU as measured (course_lib.precision), bf16 on GPUs that have it, fp16 on a T4
    gradient_checkpointing: bool = False
    max_length: int = 512
    pack: bool = False  # True: pre-pack into rows of max_length; batch_size then counts rows
    answer_only: bool = True  # False: the loss counts every token (notebook 02's ablation)
    replay_share: float = knobs.REPLAY_SHARE  # share of general instruction data mixed in against forgetting
    max_examples: int = knobs.MAX_EXAMPLES  # 0 = all training examples
    max_val_examples: int = 0  # 0 = the whole validation split
    seed: int = knobs.SEED
    save_every: str = "epoch"  # "epoch", a number of steps, or "no" (scratch runs)
    eval_every: int = 0  # > 0: validation loss every N steps (monitoring, early stopping)
    logging_steps: int = 5
    tensorboard: bool = False
    quiet: bool = False  # one progress line of our own instead of the libraries' bars (panels, sweeps)
    output_dir: str = ""  # default: RUN_DIR/train/<method>


@dataclass
class TrainResult:
    output_dir: Path
    adapter_dir: Path
    config: dict
    log_history: list = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    steps: int = 0
    train_seconds: float = 0.0
    tokens_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    val_loss: float = float("nan")
    train_examples: int = 0

    def summary(self) -> dict:
        keep = ("trainable_params", "total_params", "steps", "train_seconds", "tokens_per_s",
                "peak_memory_mb", "val_loss", "train_examples")
        return {k: getattr(self, k) for k in keep} | {"method": self.config["method"],
                                                       "adapter_dir": str(self.adapter_dir)}


def precision_flags(precision: str, device: str) -> dict:
    """Trainer's mixed-precision switches for this device (and ``use_cpu`` on a CPU).

    ``use_cpu`` comes with them because transformers refuses ``bf16=True`` without it on a machine
    with no GPU ("Your setup doesn't support bf16/gpu"), and on a CPU the measured choice can be bf16.

    "auto": on GPUs, bf16 where supported (Ampere and newer), else fp16 (a T4) with loss scaling;
    on a CPU, what ``course_lib.precision`` measured fastest on this machine (measuring once if it
    never did): fp32, or bf16 autocast (over fp32 weights, or over bf16 ones: ``models.pick_dtype``
    then loads the model in bf16); on MPS, fp32.
    """
    import torch

    if precision == "auto":
        if device == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device == "cpu":
            chosen = number_formats.cpu_choice() or precision_speed.measure_and_remember()
            precision = "fp32" if chosen == "fp32" else "bf16"
        else:
            precision = "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": device == "cpu"}


def build_datasets(cfg: TrainConfig, tokenizer, run_dir: Path):
    """The cleaned split from notebook 01 (built on the spot if missing), tokenized for training."""
    from datasets import concatenate_datasets

    split = data.load_split(data.ensure_dataset(run_dir))
    train_set, val_set = split["train"], split["validation"]
    if cfg.max_examples:
        train_set = train_set.shuffle(seed=cfg.seed).select(range(min(cfg.max_examples, len(train_set))))
    if cfg.max_val_examples:
        val_set = val_set.select(range(min(cfg.max_val_examples, len(val_set))))
    if cfg.replay_share > 0:
        train_set = concatenate_datasets([train_set, replay_examples(len(train_set), cfg.replay_share, cfg.seed)])
    train_tok = batches.tokenize(train_set.select_columns(["messages"]), tokenizer, cfg.max_length)
    val_tok = batches.tokenize(val_set.select_columns(["messages"]), tokenizer, cfg.max_length)
    if not cfg.answer_only:
        train_tok = batches.label_everything(train_tok)  # validation keeps answer-only: same yardstick
    if cfg.pack:
        train_tok = batches.pack(train_tok, cfg.max_length)
    return train_tok.shuffle(seed=cfg.seed), val_tok, len(train_set)


def replay_examples(n_task: int, share: float, seed: int):
    """General instruction data to mix in so that SHARE of the final mix is replay (against forgetting)."""
    from datasets import Dataset

    pool = data.load_records(paths.data_samples("general", "instructions.jsonl")).records
    wanted = min(len(pool), round(share * n_task / (1 - share)))
    rows = Dataset.from_list([{"messages": r["messages"]} for r in pool]).shuffle(seed=seed)
    return rows.select(range(wanted))


def output_folder(cfg: TrainConfig, run_dir=None, resume: bool = False) -> Path:
    """The run's folder (RUN_DIR/train/<method> unless CFG says); an earlier run's folder is kept
    aside (renamed with its time), never overwritten, unless RESUME continues it."""
    out = Path(cfg.output_dir) if cfg.output_dir else paths.run_dir(run_dir) / "train" / cfg.method
    if out.exists() and any(out.iterdir()) and not resume and _rank() == 0:
        kept = paths.keep_aside(out)
        print(f"An earlier run was in {out}; kept it as {kept.name}.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when running alone)."""
    return int(os.environ.get("RANK", "0"))


def last_checkpoint(output_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


def training_arguments(cfg: TrainConfig, out: Path, device: str):
    from transformers import TrainingArguments

    by_steps = cfg.save_every not in ("epoch", "no")
    return TrainingArguments(
        output_dir=str(out), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup, lr_scheduler_type=cfg.scheduler,
        max_grad_norm=cfg.max_grad_norm, **precision_flags(cfg.precision, device),
        logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy="steps" if cfg.eval_every else "epoch" if cfg.max_steps <= 0 else "no",
        eval_steps=cfg.eval_every or None,
        logging_nan_inf_filter=False,  # show a NaN loss as NaN (the default hides it behind an average)
        save_strategy="steps" if by_steps else cfg.save_every, save_steps=int(cfg.save_every) if by_steps else 500,
        save_total_limit=2, report_to=["tensorboard"] if cfg.tensorboard else [],
        seed=cfg.seed, data_seed=cfg.seed, remove_unused_columns=False, dataloader_num_workers=0,
        include_num_input_tokens_seen="all",  # padding-free batches: every token is a real one
        disable_tqdm=cfg.quiet,
    )


def train(cfg: TrainConfig | None = None, run_dir=None, callbacks=(), resume: bool = False,
          **overrides) -> TrainResult:
    """Train one model with CFG (plus keyword overrides) and save the adapter with its tokenizer.

    The same steps notebook 02 writes out cell by cell (model, LoraConfig, TrainingArguments,
    Trainer, ``finish``), for the command line, the method comparison and ``ensure_adapter``.
    ``resume=True`` continues from the last checkpoint in the output folder (after an interruption).
    """
    import torch
    from transformers import set_seed

    cfg = TrainConfig(**{**asdict(cfg or TrainConfig()), **overrides})
    run_dir = paths.run_dir(run_dir)
    out = output_folder(cfg, run_dir, resume)
    set_seed(cfg.seed)
    device = models.pick_device()
    # Peak memory of this run: the process's high-water mark is reset first, since a process
    # started from a big Jupyter kernel inherits the kernel's peak (ru_maxrss survives fork+exec).
    procmem.reset_peak()
    baseline = procmem.rss_now()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    precision_flags(cfg.precision, device)  # first: on a new CPU, "auto" measures before the model loads
    # An explicit precision on a CPU means fp32 weights (bf16 is then autocast's job).
    weights = "float32" if device == "cpu" and cfg.precision != "auto" else "auto"
    with ui.quiet_progress(cfg.quiet):
        model, tokenizer = prepare_model(
            cfg.model, cfg.method, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=cfg.target_modules, num_virtual_tokens=cfg.num_virtual_tokens,
            gradient_checkpointing=cfg.gradient_checkpointing, weights_dtype=weights)
        args = training_arguments(cfg, out, device)
        with args.main_process_first(local=False, desc="preparing the dataset"):  # one writer when distributed
            train_tok, val_tok, n_examples = build_datasets(cfg, tokenizer, run_dir)
    progress = [StepProgress(f"{cfg.method}, lr {cfg.learning_rate:g}")] if cfg.quiet else []
    trainer = _trainer(model, tokenizer, args, train_tok, eval_dataset=val_tok, callbacks=[*callbacks, *progress],
                       trained_logits_only=cfg.method != "prompt_tuning")
    if cfg.quiet:
        trainer.remove_callback(PrinterCallback)  # without a bar, Trainer prints every log as a dict
    checkpoint = last_checkpoint(out) if resume else None
    if resume:
        print(f"Resuming from {checkpoint}." if checkpoint else f"No checkpoint in {out}: starting fresh.")
    trainer.train(resume_from_checkpoint=checkpoint)
    # A callback may restore earlier weights (early stopping): then the last logged validation loss
    # describes other weights, so it is measured again.
    remeasure = any(getattr(c, "changes_weights", True) for c in callbacks)
    return finish(trainer, tokenizer, cfg, n_examples, memory_baseline=baseline, remeasure=remeasure)


class StepProgress(TrainerCallback):
    """One progress line with the loss, in place of Trainer's bar (which can freeze inside a widget)."""

    changes_weights = False

    def __init__(self, label: str = "training"):
        self.label, self.bar = label, None

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, desc=self.label, unit="step")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


def finish(trainer, tokenizer, cfg: TrainConfig, n_examples: int = 0, *, memory_baseline: float | None = None,
           remeasure: bool = False) -> TrainResult:
    """After ``trainer.train()``: the final validation loss, the figures, and the adapter saved.

    Saves to ``<output_dir>/final`` with the tokenizer and CFG (``course_train.json``), so the folder
    reloads by itself with ``runs.load``. REMEASURE: a callback (early stopping) may have restored
    earlier weights, whose loss the last log does not describe. MEMORY_BASELINE: the process's
    resident memory before the model was loaded (None: peak memory is not reported).
    """
    import torch

    val_loss = trainer.evaluate()["eval_loss"] if remeasure else final_eval_loss(trainer)
    cuda = torch.cuda.is_available() and trainer.args.device.type == "cuda"
    peak = float("nan")
    if memory_baseline is not None:
        peak = (torch.cuda.max_memory_allocated() if cuda else procmem.peak_rss()[0] - memory_baseline) / 2**20
    trainable, total = trainable_parameters(trainer.model)
    out = Path(trainer.args.output_dir)
    adapter_dir = save_trained(trainer, tokenizer, cfg, out / "final")
    seconds = next((h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h), float("nan"))
    return TrainResult(
        output_dir=out, adapter_dir=adapter_dir, config=asdict(cfg), log_history=trainer.state.log_history,
        trainable_params=trainable, total_params=total, steps=trainer.state.global_step,
        train_seconds=round(seconds, 1), tokens_per_s=round(trainer.state.num_input_tokens_seen / seconds, 1),
        peak_memory_mb=round(peak, 1), val_loss=round(val_loss, 4), train_examples=n_examples)


def _trainer(model, tokenizer, args, train_dataset, *, eval_dataset=None, trainer_class=None, callbacks=(),
             trained_logits_only: bool = True, **trainer_kwargs):
    """The course's Trainer (or TRAINER_CLASS) on padding-free batches, the tokenizer as its processing class."""
    from transformers import Trainer

    return (trainer_class or Trainer)(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=batches.collator(tokenizer, trained_logits_only), processing_class=tokenizer,
        callbacks=list(callbacks), **trainer_kwargs)


def fit(model, tokenizer, train_dataset, cfg: TrainConfig, out_dir, *, trainer_class=None, callbacks=(),
        eval_dataset=None, trained_logits_only: bool = True, progress: bool = False, **trainer_kwargs):
    """Train a model already in memory on TRAIN_DATASET (tokenized) with CFG's settings; returns the trainer.

    For the runs ``train`` does not cover (the appendices): a model loaded and changed beforehand,
    any tokenized data, a Trainer subclass with its own loss (TRAINER_CLASS, its extra arguments in
    TRAINER_KWARGS). Same TrainingArguments as ``train`` (``training_arguments``: CFG's steps, batch,
    learning rate, schedule, precision, seed, saving), same padding-free batches; CFG's model and
    method are not used, the model is given. ``trained_logits_only=False`` when the loss needs the
    logits of every position (distillation's KL). Nothing is saved unless CFG.save_every asks for
    checkpoints (``save_trained`` writes a reloadable folder). The run's time and mean loss are in
    ``trainer.state.log_history[-1]`` (``train_runtime``, ``train_loss``).
    """
    args = training_arguments(cfg, Path(out_dir), models.pick_device())
    args.disable_tqdm = not progress
    trainer = _trainer(model, tokenizer, args, train_dataset, eval_dataset=eval_dataset, trainer_class=trainer_class,
                       callbacks=callbacks, trained_logits_only=trained_logits_only, **trainer_kwargs)
    trainer.train()
    return trainer


def final_eval_loss(trainer) -> float:
    """Validation loss at the last step: reused if the end-of-epoch evaluation just ran, else computed."""
    last = [h for h in trainer.state.log_history if "eval_loss" in h]
    if last and last[-1]["step"] == trainer.state.global_step:
        return last[-1]["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def save_trained(trainer, tokenizer, cfg: TrainConfig, folder: Path) -> Path:
    """Adapter (or full model) + tokenizer + the run's config, so it reloads by itself (``runs.load``)."""
    trainer.save_model(str(folder))  # writes on the main process only
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(folder)
        runs.write_config(folder, {**asdict(cfg), "world_size": trainer.args.world_size})
    return folder


def ensure_adapter(run_dir=None, model_name: str = knobs.MODEL, steps: int = knobs.FALLBACK_STEPS,
                   learning_rate: float = knobs.FALLBACK_LEARNING_RATE, batch_size: int = knobs.FALLBACK_BATCH_SIZE,
                   **train_overrides) -> Path:
    """The trained adapter notebook 02 saved (RUN_DIR/train/lora/final), or a short one trained now.

    A notebook must run on its own: without notebook 02's adapter (or with one trained on another
    model) this trains a quick LoRA (q_proj, v_proj) into RUN_DIR/quantize/adapter, leaving 02's
    folder alone.
    """
    run_dir = paths.run_dir(run_dir)
    if folder := runs.find_adapter(run_dir, model_name):
        print(f"Using the trained adapter in {folder}.")
        return folder
    print(f"No trained adapter for {model_name} in {run_dir / 'train'}: training a short LoRA now "
          f"({steps} steps of {batch_size} examples at learning rate {learning_rate}, a couple of minutes on a laptop CPU) so "
          f"this notebook runs on its own. Notebook 02's longer run gives a stronger persona.")
    # Every persona example, no replay: a short run spends its few steps on the persona.
    settings = dict(model=model_name, method="lora", target_modules=knobs.TARGET_MODULES, max_steps=steps,
                    max_examples=0, replay_share=0.0,
                    learning_rate=learning_rate, batch_size=batch_size, logging_steps=max(1, steps // 4),
                    output_dir=str(run_dir / "quantize" / "adapter"))
    result = train(run_dir=run_dir, **{**settings, **train_overrides})
    return result.adapter_dir


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib.train",
                                     description="Personalize a model (same code as notebook 02).")
    for f in fields(TrainConfig):
        kind = {"bool": lambda s: s.lower() in ("1", "true", "yes"), "int": int, "float": float}.get(f.type, str)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--json", default=None, help="write the run's summary here")
    parser.add_argument("--fresh", action="store_true", help="replace OUTPUT_DIR instead of keeping it aside")
    parser.add_argument("--persona-eval", type=int, default=0, help="score the result on N held-out persona questions")
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    args = vars(_parser().parse_args(argv))
    run_dir, resume, json_out = args.pop("run_dir"), args.pop("resume"), args.pop("json")
    persona_eval = args.pop("persona_eval")
    if args.pop("fresh") and args["output_dir"]:
        shutil.rmtree(args["output_dir"], ignore_errors=True)  # comparison runs are scratch
    result = train(TrainConfig(**args), run_dir=run_dir, resume=resume)
    if _rank() != 0:
        return 0  # under torchrun, rank 0 reports for everyone
    summary = result.summary()
    if persona_eval:
        model, tokenizer = runs.load(result.adapter_dir)
        summary["persona_score"] = evaluate.evaluate(model, tokenizer, "persona", limit=persona_eval).score
    print(json.dumps(summary, indent=2))
    if json_out:
        Path(json_out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
