"""Which number format trains fastest on this CPU: measured once per machine, never assumed.

On a GPU the answer is known (bf16 where the GPU has it, else fp16 with loss scaling). On a CPU it
depends on the chip and on PyTorch's kernels: bf16 matrix products run several times faster than
fp32 on CPUs with AMX units and slower on many without, and a training step is more than matrix
products. So ``measure`` times a few real LoRA training steps and a short generation in three
formats (after a one-second ``probe`` that rules out a format whose core kernel is already slower
than fp32's) and ``choose`` picks the fastest whose loss agrees with fp32:

- ``fp32``: weights and math in fp32 (exact; the safe answer);
- ``bf16``: fp32 weights, the math under bf16 autocast (``TrainingArguments(bf16=True)``): autocast
  converts every frozen weight to bf16 again at each forward, which can eat the matmul's gain;
- ``bf16-weights``: the frozen base weights stored in bf16, the LoRA matrices and their optimizer
  in fp32, the math under autocast (what QLoRA does with its compute dtype): no conversions.

The choice is kept in the course cache (``precision.json``, one entry per CPU, PyTorch version and
thread count) and serves training (``train.precision_flags``), evaluation and the server (loading
in bf16 when ``bf16-weights`` won, through ``models.pick_dtype``). ``COURSE_PRECISION=fp32`` (or
``bf16``, ``bf16-weights``) in the environment overrides it everywhere.
"""

from __future__ import annotations

import json
import os
import time

from course_lib import knobs, paths

FORMATS = ("fp32", "bf16", "bf16-weights")
ENV = "COURSE_PRECISION"
LOSS_TOLERANCE = 0.02  # a format's first-step loss may differ from fp32's by this share at most
MIN_SPEEDUP = 1.1  # ... and must train at least this much faster than fp32 (below that is timing noise)


def machine_key() -> str:
    """What the measurement depends on: the CPU, the PyTorch build and the threads it uses."""
    import torch

    from course_lib import env

    return f"{env.cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _cache_file():
    return paths.cache_dir() / "precision.json"


def remembered() -> dict | None:
    """This machine's last measurement and choice, or None if it was never measured."""
    try:
        return json.loads(_cache_file().read_text()).get(machine_key())
    except (OSError, ValueError):
        return None


def remember(measured: dict, choice: str) -> None:
    """Keep MEASURED and CHOICE for this machine (written whole, then renamed: never half a file)."""
    cache = _cache_file()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    known[machine_key()] = {"choice": choice, "measured": measured, "when": time.strftime("%Y-%m-%d %H:%M")}
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(known, indent=1))
    partial.replace(cache)


def pinned() -> str | None:
    """The format forced by ``COURSE_PRECISION``, if set (a clear error when it names none)."""
    value = os.environ.get(ENV, "").strip()
    if value and value not in FORMATS:
        raise ValueError(f"{ENV}={value!r}: use one of {', '.join(FORMATS)} (or unset it to measure)")
    return value or None


def choose(measured: dict, tolerance: float = LOSS_TOLERANCE, min_speedup: float = MIN_SPEEDUP) -> str:
    """The fastest format whose loss agrees with fp32's within TOLERANCE and that beats fp32's
    training speed by MIN_SPEEDUP; fp32 when none does (or when fp32 was not measured)."""
    base = measured.get("fp32")
    if not base:
        return "fp32"
    best, best_speed = "fp32", base["train_tokens_per_s"] * min_speedup
    for name, m in measured.items():
        if m.get("skipped"):
            continue
        agrees = abs(m["loss"] - base["loss"]) <= tolerance * abs(base["loss"])
        if name != "fp32" and agrees and m["train_tokens_per_s"] >= best_speed:
            best, best_speed = name, m["train_tokens_per_s"]
    return best


def cpu_choice(measure_if_missing: bool = True) -> str:
    """The CPU format: pinned by the environment, else remembered, else measured now (once)."""
    forced = pinned()
    if forced:
        return forced
    known = remembered()
    if known:
        return known["choice"]
    if not measure_if_missing:
        return "fp32"
    print("Measuring which number format trains fastest on this CPU (once per machine, about half a minute)...")
    measured = measure()
    choice = choose(measured)
    remember(measured, choice)
    print(f"  -> {choice}: {describe(measured, choice)}")
    return choice


def describe(measured: dict, choice: str) -> str:
    """One sentence: the chosen format's speed against fp32's."""
    base = measured["fp32"]["train_tokens_per_s"]
    speeds = ", ".join(f"{name} {m['probe_speedup']:.2f}x (one layer only: slower, not timed further)"
                       if m.get("skipped") else f"{name} {m['train_tokens_per_s'] / base:.2f}x"
                       for name, m in measured.items())
    return f"training speed relative to fp32: {speeds}; chosen: {choice}"


def _batch(tokenizer, seq_len: int, batch_size: int):
    """Real persona conversations, padding-free (as the course trains), about BATCH_SIZE x SEQ_LEN tokens."""
    from course_lib import batches, data

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
    from transformers import set_seed

    from course_lib import train

    set_seed(0)  # the same LoRA initialisation in every format
    model, tokenizer = train.prepare_model(model_name, "lora", device="cpu",
                                           weights_dtype="bfloat16" if fmt == "bf16-weights" else "float32")
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


def measure(model_name: str = knobs.MODEL, formats=FORMATS, always: bool = False, **settings) -> dict:
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


HOW = {"fp32": "fp32 weights, fp32 math", "bf16": "fp32 weights, bf16 autocast",
       "bf16-weights": "bf16 frozen weights, fp32 adapter, bf16 autocast"}


def table(measured: dict, choice: str):
    """MEASURED as a table: one row per format, speeds relative to fp32, the chosen one marked."""
    from course_lib import ui

    base = measured["fp32"]
    rows = []
    for name, m in measured.items():
        timed = not m.get("skipped")
        rows.append({
            "format": name, "weights and math": HOW.get(name, ""),
            "one layer vs fp32": f"{m['probe_speedup']:.2f}x",
            "training vs fp32": f"{m['train_tokens_per_s'] / base['train_tokens_per_s']:.2f}x" if timed else "not timed",
            "generation vs fp32": (f"{m['generate_tokens_per_s'] / base['generate_tokens_per_s']:.2f}x"
                                   if timed else "not timed"),
            "first-step loss": f"{m['loss']:.4f}" if timed else "",
            "chosen": "yes" if name == choice else ""})
    return ui.Table(rows, title=f"Number formats on this CPU (fp32: {base['train_tokens_per_s']:.0f} training "
                                f"tokens/s, {base['generate_tokens_per_s']:.1f} generated tokens/s)")
