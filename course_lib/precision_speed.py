"""How fast each number format trains and generates on this CPU: the measurement behind
``precision="auto"`` (``course_lib.precision`` holds the formats, the rule and the remembered choice).

A one-second ``probe`` first (one layer's forward and backward pass), then, for every format whose
probe is not slower than fp32's, real LoRA training steps on persona batches and a short greedy
generation (``measure_one``). The model is made trainable with PEFT's own calls, as in notebook 02.
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


def measure_one(fmt: str, model_name: str = knobs.MODEL, seq_len: int = 128, batch_size: int = 4,
                steps: int = 3, new_tokens: int = 16) -> dict:
    """Time STEPS LoRA training steps (after one warm-up step) and a NEW_TOKENS greedy generation in FMT.

    ``loss`` is the first step's loss: same weights, same batch in every format, so it shows how
    far the format's arithmetic moves the result.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(0)  # the same LoRA initialisation in every format
    model, tokenizer = models.load(model_name, device="cpu", dtype="bfloat16" if fmt == "bf16-weights" else "float32")
    model.config.use_cache = False  # as in training (train.prepare_model)
    model = get_peft_model(model, LoraConfig(r=knobs.LORA_R, lora_alpha=knobs.LORA_ALPHA, task_type="CAUSAL_LM",
                                             target_modules=knobs.TARGET_MODULES.split(",")))
    batch, tokens = _batch(tokenizer, seq_len, batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=fmt != "fp32")
    losses, started = [], 0.0
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()  # step 0 is the warm-up: first-call setup of every kernel
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    train_seconds = time.perf_counter() - started
    return {"train_tokens_per_s": tokens * steps / train_seconds, "loss": losses[0],
            "generate_tokens_per_s": _generate_speed(model, tokenizer, autocast, new_tokens)}


def _generate_speed(model, tokenizer, autocast, new_tokens: int) -> float:
    import torch

    model.eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is compost?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    settings = dict(do_sample=False, use_cache=True, pad_token_id=tokenizer.eos_token_id)
    with torch.no_grad(), autocast:
        model.generate(**prompt, max_new_tokens=2, **settings)  # warm-up
        started = time.perf_counter()
        model.generate(**prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **settings)
    return new_tokens / (time.perf_counter() - started)


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
    """{format: figures}: ``measure_one`` for fp32 and for each format whose ``probe`` is at least as
    fast as fp32's (or for every format when ALWAYS); the others keep their probe's speedup only."""
    from tqdm.auto import tqdm

    base = probe("fp32")
    measured = {}
    for fmt in tqdm(formats, desc="number formats"):
        speedup = base / probe(fmt) if fmt != "fp32" else 1.0
        if fmt == "fp32" or always or speedup >= 1:
            measured[fmt] = {**measure_one(fmt, model_name, **settings), "probe_speedup": speedup}
        else:
            measured[fmt] = {"probe_speedup": speedup, "skipped": True}
    return measured
