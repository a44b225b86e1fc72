"""How fast each number format trains and generates on this CPU: the measurement behind
``precision="auto"`` (``course_lib.precision`` holds the formats, the rule and the remembered choice).

A one-second ``probe`` first (one layer's forward and backward pass), then, for every format whose
probe is not slower than fp32's, real LoRA training steps on persona batches and a short greedy
generation, the formats taking turns (``measure_side_by_side``). The model is made trainable with
PEFT's own calls, as in notebook 02.
"""

from __future__ import annotations

import time

from course_lib import batches, data, knobs, models, paths, precision


def measure_and_remember() -> str:
    """Measure this CPU once, remember the choice, say it in one line, return it."""
    print("Measuring which number format trains fastest on this CPU (once per machine, about half a minute)...")
    measured = measure()
    choice = precision.choose(measured)
    precision.remember(measured, choice)
    print(f"  -> {choice}: {precision.describe(measured, choice)}")
    return choice


def _batch(tokenizer, seq_len: int, batch_size: int):
    """Real persona conversations, padding-free (as the course trains), about BATCH_SIZE x SEQ_LEN tokens."""
    records = data.load_records(paths.data_samples("persona", "train.jsonl")).records
    rows, total = [], 0
    for record in records:
        row = batches.encode(record["messages"], tokenizer)
        rows.append(row)
        total += row["length"]
        if total >= seq_len * batch_size:
            break
    return batches.FlatCollator()(rows), total


def _trial(fmt: str, model_name: str, seq_len: int, batch_size: int) -> dict:
    """FMT's model made trainable with PEFT (the same LoRA start in every format), its optimizer and batch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(0)  # the same LoRA initialisation in every format
    model, tokenizer = models.load(model_name, device="cpu", dtype="bfloat16" if fmt == "bf16-weights" else "float32")
    model.config.use_cache = False  # as in training (train.prepare_model)
    model = get_peft_model(model, LoraConfig(r=knobs.LORA_R, lora_alpha=knobs.LORA_ALPHA, task_type="CAUSAL_LM",
                                             target_modules=knobs.TARGET_MODULES.split(",")))
    batch, tokens = _batch(tokenizer, seq_len, batch_size)
    return {"model": model, "tokenizer": tokenizer, "batch": batch, "tokens": tokens,
            "optimizer": torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4),
            "autocast": torch.autocast("cpu", dtype=torch.bfloat16, enabled=fmt != "fp32")}


def _train_step(trial: dict) -> tuple[float, float]:
    """One training step of TRIAL: (seconds, loss)."""
    started = time.perf_counter()
    with trial["autocast"]:
        loss = trial["model"](**trial["batch"]).loss
    loss.backward()
    trial["optimizer"].step()
    trial["optimizer"].zero_grad()
    return time.perf_counter() - started, loss.item()


def measure_side_by_side(formats, model_name: str = knobs.MODEL, seq_len: int = 128, batch_size: int = 4,
                         steps: int = 3, new_tokens: int = 16, rounds: int = 2) -> dict:
    """{format: figures} for FORMATS timed in turns: a warm-up step of each, then STEPS rounds of one
    training step per format, then ROUNDS of a NEW_TOKENS greedy generation per format.

    In turns, because a shared machine's speed drifts by the minute: timed one after the other, two formats
    within 15% of each other swapped places between two runs. Each format's figure is its best
    round (other work can only slow a round down). ``loss`` is the warm-up step's loss: same weights,
    same batch in every format, so it shows how far the format's arithmetic moves the result.
    """
    from tqdm.auto import tqdm

    trials = {fmt: _trial(fmt, model_name, seq_len, batch_size) for fmt in tqdm(formats, desc="loading formats")}
    first_loss = {fmt: _train_step(trial)[1] for fmt, trial in trials.items()}  # first calls set kernels up
    best_step = dict.fromkeys(trials, float("inf"))
    for _ in tqdm(range(steps), desc="training rounds (formats in turns)"):
        for fmt, trial in trials.items():
            best_step[fmt] = min(best_step[fmt], _train_step(trial)[0])
    best_generation = dict.fromkeys(trials, float("inf"))
    for _ in range(rounds):
        for fmt, trial in trials.items():
            best_generation[fmt] = min(best_generation[fmt], _generation_seconds(trial, new_tokens))
    return {fmt: {"train_tokens_per_s": trials[fmt]["tokens"] / best_step[fmt], "loss": first_loss[fmt],
                  "generate_tokens_per_s": new_tokens / best_generation[fmt]} for fmt in trials}


def _generation_seconds(trial: dict, new_tokens: int) -> float:
    """Seconds for a NEW_TOKENS greedy answer of TRIAL's model (after a two-token warm-up)."""
    import torch

    model, tokenizer = trial["model"], trial["tokenizer"]
    model.eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is compost?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    settings = dict(do_sample=False, use_cache=True, pad_token_id=tokenizer.eos_token_id)
    with torch.no_grad(), trial["autocast"]:
        model.generate(**prompt, max_new_tokens=2, **settings)  # warm-up
        started = time.perf_counter()
        model.generate(**prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **settings)
    return time.perf_counter() - started


def probe(fmt: str, hidden: int = 576, inner: int = 1536, tokens: int = 256, repeats: int = 3) -> float:
    """Seconds for one forward and backward pass through a frozen HIDDEN -> INNER linear layer (the
    shape of an MLP projection) on TOKENS tokens in FMT: the core of a training step, in a second.

    Where bf16 has no fast kernel, a step can be tens of times slower than fp32 (measured on a
    2-core AMD EPYC: 448 ms against 16 ms here), and timing whole steps would take minutes.
    """
    import torch

    weights = torch.bfloat16 if fmt == "bf16-weights" else torch.float32
    layer = torch.nn.Linear(hidden, inner, bias=False).to(weights).requires_grad_(False)
    x = torch.randn(tokens, hidden, requires_grad=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fmt != "fp32"):
            y = layer(x)
        y.float().sum().backward()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats


def measure(model_name: str = knobs.MODEL, formats=precision.FORMATS, always: bool = False, **settings) -> dict:
    """{format: figures}: fp32 and each format whose ``probe`` is at least as fast as fp32's (or every
    format when ALWAYS) timed side by side (``measure_side_by_side``); the others keep their probe's
    speedup only."""
    base = probe("fp32")
    speedups = {fmt: base / probe(fmt) if fmt != "fp32" else 1.0 for fmt in formats}
    timed = [fmt for fmt in formats if fmt == "fp32" or always or speedups[fmt] >= 1]
    measured = measure_side_by_side(timed, model_name, **settings)
    return {fmt: {**measured[fmt], "probe_speedup": speedups[fmt]} if fmt in measured
            else {"probe_speedup": speedups[fmt], "skipped": True} for fmt in formats}
