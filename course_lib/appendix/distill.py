"""Distillation: squeeze the personalized model into a smaller student that still sounds like Sprout.

- teacher: the base model with the persona adapter merged into its weights (notebook 02's adapter);
- student: the same architecture with every other decoder layer removed, initialised from the
  teacher's own weights (the layers it keeps are copied, not random);
- the setting: only a few questions have a hand-written answer (``labelled``), many more have
  none (``transfer``), which is where a teacher can help: it can answer them;
- "student alone": the student fine-tuned on the labelled examples with the usual next-token loss;
- "distilled student": the same steps on the labelled examples plus the transfer questions with the
  teacher's greedy answers (sequence-level distillation, Kim and Rush, 2016, arXiv:1606.07947),
  its loss the usual one mixed with a KL term pulling its token distributions towards the teacher's
  (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531).

What the measurements on the default model taught (notebook 02's adapter as teacher, persona 0.775;
AMD EPYC, 2 cores, fp32, December 2026; notebook A4 records the scores of its own run, and
``course_lib.reference`` the reference run's):
- the distilled student imitates its teacher: on the 40 held-out persona questions, its KL to the
  teacher's answers was about a third of the student alone's (0.83-0.86 against 2.56-2.65 at
  seeds 0-2; the untrained cut's 3.13): the student alone learned the hand-written answers' way of
  speaking instead;
- imitating it did not make a better Sprout: persona scores 0.650, 0.625, 0.650 against the student
  alone's 0.675, 0.550, 0.750 at seeds 0-2 (24 labelled examples, 96 transfer questions; a lead
  at seed 1 only). With 8 labelled and 112 transfer the student alone led at every seed, and so it
  did with students cut from the base model instead of the persona teacher (alone 0.825, 0.625,
  0.600, distilled 0.600, 0.550, 0.550). The teacher's own answers pass 0.775 of the persona
  questions, no more than a student trained on hand-written answers reaches at some seeds, and a
  student copies its teacher's mistakes with the rest;
- on another host of the same kind, with an earlier persona adapter, the distilled student had led
  by 2 and 5 questions at seeds 0 and 1: the persona score of a 22-layer student moves by several
  questions with the seed and the machine, its KL to the teacher much less.
Distillation pays where the teacher knows more than the labels can teach (a much larger model, or
one trained on far more data); this teacher learned its persona from answers like the labelled ones.

What did not work either: with every one of the 465 labelled examples given to both students, the
KL on the same data did not beat the usual loss (the lead changed sign with the seed, the KL's
positions, alpha, T and the learning rate). The labels already hold everything the teacher learned
from, so its distributions add little.
"""

from __future__ import annotations

import copy
import random
import time

import torch

from course_lib import batches, data, evaluate, paths, quantize, runtimes
from course_lib.appendix import continual


def load_teacher(adapter_dir):
    """The persona model with its adapter merged (no LoRA detour per token) -> (model, tokenizer)."""
    model, tokenizer, _ = quantize.load_unmerged(adapter_dir)
    model = model.merge_and_unload().eval()
    model.config.use_cache = False
    for param in model.parameters():
        param.requires_grad = False
    return model, tokenizer


def _band(num_layers: int) -> list[int]:
    """The layers ``layers_to_drop`` may remove, from the top of the middle band down (the last 5 stay)."""
    return list(range(num_layers - 6, 0, -2)) or list(range(num_layers - 1, 0, -1))


def max_drop(num_layers: int) -> int:
    """How many layers a model of NUM_LAYERS can lose (the notebook's slider goes this far)."""
    return len(_band(num_layers))


def layers_to_drop(num_layers: int, n_drop: int) -> list[int]:
    """Every other layer of the middle band, from the top of the band down (the last 5 layers stay).

    Measured on the persona teacher (SmolLM2-135M, 30 layers; answer loss on 16 training examples
    before any repair): dropping one middle layer barely hurt, four or eight middle layers hurt more
    and more, while every other layer of all 30, or a block of the last layers, left a model worse
    than guessing. The last layers turn the residual stream into next-token scores and the first
    ones build features every later layer reads: the middle ones are the most redundant, and
    dropping them one apart leaves each gap bridged by a neighbour.
    """
    band = _band(num_layers)
    if not 0 < n_drop <= len(band):
        raise ValueError(f"can drop 1 to {len(band)} of this model's {num_layers} layers, not {n_drop}")
    return sorted(band[:n_drop])


def make_student(teacher, n_drop: int = 8):
    """A copy of TEACHER without N_DROP of its decoder layers (``layers_to_drop``): fewer layers, same width.

    Why copy the teacher's layers instead of starting from random weights: each decoder layer adds
    a correction to the same residual stream, so a model with some layers skipped still produces
    roughly sensible hidden states, and the embeddings and output layer already speak the language.
    Training only has to repair the gaps, which a CPU can do in minutes; a random student would need
    pretraining first. DistilBERT initialised its student the same way (one layer of two; Sanh et
    al., 2019, arXiv:1910.01108).
    """
    student = copy.deepcopy(teacher)
    drop = set(layers_to_drop(student.config.num_hidden_layers, n_drop))
    kept = [layer for i, layer in enumerate(student.model.layers) if i not in drop]
    student.model.layers = torch.nn.ModuleList(kept)
    for index, layer in enumerate(kept):
        layer.self_attn.layer_idx = index  # the KV cache is indexed by layer: renumber, or generation breaks
    config = student.config
    if getattr(config, "layer_types", None):
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in drop]
    config.num_hidden_layers = len(kept)
    for name, param in student.named_parameters():
        # The embedding matrix is tied to the output layer (49152 x 576, a fifth of the model): kept
        # frozen, the two students differ only in what their decoder layers learn, and steps are faster.
        param.requires_grad = "embed_tokens" not in name and "lm_head" not in name
    return student


def loss_on(records, tokenizer):
    """A function model -> mean answer-token loss on RECORDS (one padding-free batch, no gradients)."""
    from datasets import Dataset

    tokenized = batches.tokenize(Dataset.from_list(records), tokenizer)
    batch = batches.collator()([tokenized[i] for i in range(len(tokenized))])

    def loss(model) -> float:
        with torch.no_grad():
            return model(**batch).loss.item()

    return loss


def split(records: list[dict], labelled: int, transfer: int, seed: int) -> tuple[list[dict], list[str]]:
    """LABELLED examples drawn at random, and the questions of TRANSFER others with their answers dropped.

    The dropped answers are what makes this a distillation setting: whoever trains on those
    questions must get their answers from the teacher.
    """
    if labelled < 1 or transfer < 0 or labelled + transfer > len(records):
        raise ValueError(f"labelled ({labelled}) + transfer ({transfer}) must fit in the {len(records)} "
                         "persona examples, with at least one labelled")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    questions = [next(m["content"] for m in reversed(records[i]["messages"]) if m["role"] == "user")
                 for i in order[labelled:labelled + transfer]]
    return [records[i] for i in order[:labelled]], questions


def teacher_answers(teacher, tokenizer, questions: list[str], max_new_tokens: int = 48) -> list[dict]:
    """The transfer set: each question with the teacher's greedy answer, as a chat example.

    48 new tokens is room enough: the hand-written persona answers are 26 tokens on average (the
    longest 46). Given 64, notebook 02's teacher answered 441 questions in 23 tokens on average; 23
    of those answers passed 48 tokens, most of them loops that ran to the limit. A batch runs until its
    longest answer stops, so the limit, not the average, sets the time.
    """
    answers = evaluate.generate(teacher, tokenizer, questions, max_new_tokens) if questions else []
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in zip(questions, answers)]


def parameters(model) -> int:
    """Stored parameters (tied embedding and output layer counted once)."""
    return sum(p.numel() for p in model.parameters())


def kl_loss(student_logits, teacher_logits, labels, temperature: float, positions: str = "answer"):
    """KL(teacher || student) per token, on distributions softened by TEMPERATURE, times T².

    POSITIONS: ``"all"`` compares every position of the batch (the prompt's too: the teacher's
    guess at each next token is a lesson even where there is no label), ``"answer"`` only those
    that predict an answer token (the ones the usual loss uses). T² keeps the gradient's size
    comparable across temperatures (Hinton et al., 2015, section 2).
    """
    import torch.nn.functional as F

    if positions not in ("all", "answer"):
        raise ValueError(f"positions must be 'all' or 'answer', not {positions!r}")
    # position t predicts token t+1, so the last position has nothing to predict
    keep = labels[:, 1:] != -100 if positions == "answer" else torch.ones_like(labels[:, 1:], dtype=torch.bool)
    s = student_logits[:, :-1][keep].float() / temperature
    t = teacher_logits[:, :-1][keep].float() / temperature
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    return kl * temperature**2


def kl_to_teacher(teacher, models: dict, tokenizer, scored, temperature: float = 1.0, chunk: int = 8) -> dict:
    """Each of MODELS' KL(teacher || model) on the teacher's own answers to held-out questions.

    SCORED is the teacher's ``evaluate.evaluate`` result on the persona questions: neither student
    trained on those questions, so a low KL there means the student learned to answer the way its
    teacher does, not that it remembers its training data. The persona score says whether that way
    is Sprout's; this says whom the student imitates. Mean over answer tokens, CHUNK examples per
    forward pass (a padding-free batch of all 40 would hold ~0.5 GB of logits per model).
    """
    from datasets import Dataset

    records = [{"messages": [{"role": "user", "content": item["question"]}, {"role": "assistant", "content": answer}]}
               for item, answer in zip(scored.items, scored.answers)]
    tokenized = batches.tokenize(Dataset.from_list(records), tokenizer)
    collate = batches.collator(trained_logits_only=False)
    totals, tokens = dict.fromkeys(models, 0.0), 0
    for start in range(0, len(tokenized), chunk):
        batch = collate([tokenized[i] for i in range(start, min(start + chunk, len(tokenized)))])
        inputs = {k: v for k, v in batch.items() if k != "labels"}  # use_cache=False with them (course_lib.batches)
        n = int((batch["labels"][:, 1:] != -100).sum())  # kl_loss averages over these positions
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits
            for name, model in models.items():
                totals[name] += n * kl_loss(model(**inputs).logits, teacher_logits, batch["labels"], temperature).item()
        tokens += n
    return {name: round(total / tokens, 6) for name, total in totals.items()}


def train_student(student, teacher, tokenizer, records, run_dir, *, distill: bool, steps: int, batch_size: int,
                  learning_rate: float, alpha: float, temperature: float, positions: str, seed: int,
                  trainer_class=None) -> dict:
    """Fine-tune STUDENT on RECORDS; returns loss history and time.

    With DISTILL, TRAINER_CLASS is notebook A4's ``DistillTrainer`` (a ``Trainer`` subclass written
    in the notebook, section 4): it is built with ``teacher``, ``alpha``, ``temperature`` and
    ``positions`` and mixes the teacher's KL into the loss.
    """
    if distill and trainer_class is None:
        raise ValueError("distill=True needs trainer_class: the DistillTrainer written in notebook A4, section 4")
    name = "distilled" if distill else "alone"
    # The KL term compares the teacher's and the student's logits position by position, so the
    # student must compute every position's logits (the collator's trained-positions-only saving off).
    extra = {"trainer_class": trainer_class, "teacher": teacher, "alpha": alpha, "temperature": temperature,
             "positions": positions, "trained_logits_only": False} if distill else {}
    torch.manual_seed(seed)
    started = time.perf_counter()
    history = continual.fit(student, tokenizer, records, steps=steps, batch_size=batch_size,
                            learning_rate=learning_rate, seed=seed,
                            out_dir=paths.run_dir(run_dir) / "distill" / name, **extra)
    student.config.use_cache = True
    return {"train_seconds": round(time.perf_counter() - started, 1),
            "losses": [h["loss"] for h in history if "loss" in h]}


def ms_per_token(models: dict, tokenizer, tokens: int = 32) -> dict:
    """Greedy decoding speed of each model, timed side by side (quantize.ms_per_token's method)."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about tomatoes."}],
                                           add_generation_prompt=True, tokenize=True, return_dict=False)
    prompt = prompt["input_ids"] if isinstance(prompt, dict) else list(prompt)
    # TorchRunner asks generate for the KV cache itself: the teacher's config keeps use_cache False
    times = quantize.ms_per_token([runtimes.TorchRunner(m) for m in models.values()], prompt, tokens)
    return dict(zip(models, (round(t, 2) for t in times)))


def transfer_data(teacher, tokenizer, run_dir, *, labelled: int = 24, transfer: int = 96, seed: int = 0) -> dict:
    """The students' data: LABELLED persona examples, and TRANSFER questions the teacher answers.

    24 + 96 = 120 examples: notebook A4's 30 steps of 4 show the distilled student each of them once.
    Answers the training never reaches would only cost the teacher's time (about a quarter of a second
    each on a 2-core CPU, in batches of 80).
    The teacher's answers are saved to RUN_DIR/distill/transfer.jsonl, for you to read.
    Returns {"labelled", "transfer" (chat examples), "answer_seconds", "file"}.
    """
    labelled_records, questions = split(continual.old_data(), labelled, transfer, seed)
    started = time.perf_counter()
    transfer_records = teacher_answers(teacher, tokenizer, questions)
    seconds = round(time.perf_counter() - started, 1)
    saved = data.write_jsonl(paths.run_dir(run_dir) / "distill" / "transfer.jsonl", transfer_records)
    return {"labelled": labelled_records, "transfer": transfer_records, "answer_seconds": seconds, "file": saved}


def compare(teacher, tokenizer, students_data: dict, run_dir, *, n_drop: int = 8, steps: int = 30,
            batch_size: int = 4, learning_rate: float = 3e-4, alpha: float = 0.5, temperature: float = 1.0,
            positions: str = "answer", seed: int = 0, eval_limit: int = 0, max_new_tokens: int = 48,
            latency_tokens: int = 32, trainer_class=None) -> dict:
    """Teacher, student trained alone, distilled student: parameters, persona score, ms/token, KL to the teacher.

    STUDENTS_DATA (``transfer_data``): the student alone learns from its labelled examples; the
    distilled student from the same ones plus the teacher-answered transfer set, with the KL term
    (ALPHA) mixed into the usual loss by TRAINER_CLASS (notebook A4's ``DistillTrainer``). Same
    steps, same batch size, same learning rate.
    """
    models = {"teacher": teacher, "student_untrained": make_student(teacher, n_drop)}
    runs = {}
    labelled = students_data["labelled"]
    for name, records, distill in (("student_alone", labelled, False),
                                   ("student_distilled", labelled + students_data["transfer"], True)):
        models[name] = make_student(teacher, n_drop)
        runs[name] = train_student(models[name], teacher, tokenizer, records, run_dir, distill=distill,
                                   steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                                   alpha=alpha, temperature=temperature, positions=positions, seed=seed,
                                   trainer_class=trainer_class)
        runs[name]["examples"] = len(records)
    speed = ms_per_token(models, tokenizer, latency_tokens)
    rows = {}
    for name, model in models.items():
        model.eval()
        scored = evaluate.evaluate(model, tokenizer, "persona", max_new_tokens, eval_limit)
        rows[name] = {"parameters": parameters(model), "layers": model.config.num_hidden_layers,
                      "persona_score": scored.score, "ms_per_token": speed[name],
                      **{k: v for k, v in runs.get(name, {}).items() if k != "losses"}, "eval": scored}
    students = {name: model for name, model in models.items() if name != "teacher"}
    for name, kl in kl_to_teacher(teacher, students, tokenizer, rows["teacher"]["eval"]).items():
        rows[name]["kl_to_teacher"] = kl
    return {"rows": rows, "losses": {k: v["losses"] for k, v in runs.items()}, "models": models}


def train_and_score(teacher, tokenizer, records, run_dir, *, n_drop: int, distill: bool, eval_limit: int = 0,
                    max_new_tokens: int = 48, **training) -> dict:
    """One student, as ``compare`` makes each: cut it, train it on RECORDS, score it on the persona questions.

    What notebook A4's panel and exercises run. TRAINING holds ``train_student``'s settings (steps,
    batch_size, learning_rate, alpha, temperature, positions, seed, trainer_class). Returns plain figures a notebook
    can record: n_drop, layers, parameters, persona_score, passed (per question), steps, alpha,
    losses, train_seconds. The student itself is dropped, so that trying many frees the memory.
    """
    student = make_student(teacher, n_drop)
    run = train_student(student, teacher, tokenizer, records, run_dir, distill=distill, **training)
    scored = evaluate.evaluate(student.eval(), tokenizer, "persona", max_new_tokens, eval_limit)
    return {"n_drop": n_drop, "layers": student.config.num_hidden_layers, "parameters": parameters(student),
            "persona_score": scored.score, "passed": scored.passed, "steps": training.get("steps"),
            "alpha": training.get("alpha") if distill else None, **run}


def direction(new: float, old: float, noise: float = 0.05) -> str:
    """"better", "worse" or "same": NEW against OLD, a difference within NOISE counting as the same.

    0.05 is two of the 40 persona questions: another seed moves a score by a question or two, so a
    smaller difference is no evidence either way.
    """
    if new > old + noise:
        return "better"
    return "worse" if new < old - noise else "same"


def check_topk_kl(fn, k: int = 20, seed: int = 0) -> tuple[bool, str]:
    """Notebook A4's Exercise 3: does FN match ``kl_loss`` using only the teacher's top-K logits?

    FN(student_logits, top_values, top_indices, labels, temperature) gets the teacher's K largest
    logits per position and their token ids (``teacher_logits.topk(K, -1)``). On a teacher that puts
    almost all its probability on a few tokens, as a trained model does, its KL on the answer
    positions must be within 5% of the full one, at two temperatures (so T and T² count).
    Returns (passed, what was compared).
    """
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(2, 9, 500, generator=generator)
    peaks = torch.randint(500, (2, 9, 3), generator=generator)
    teacher.scatter_add_(-1, peaks, torch.full(peaks.shape, 20.0))  # a few likely tokens, a long unlikely tail
    labels = torch.randint(500, (2, 9), generator=generator)
    labels[:, :4] = -100  # the prompt: no label, no KL
    # Close to the teacher where the KL counts (positions 3-7 predict answer tokens 4-8), far from it
    # where it must not: the prompt's positions, and the last one, which predicts nothing.
    student = torch.randn(2, 9, 500, generator=generator)
    student[:, 3:8] = teacher[:, 3:8] + torch.randn(2, 5, 500, generator=generator)
    top = teacher.topk(k, -1)
    lines, passed = [], True
    for temperature in (1.0, 1.5):
        expected = kl_loss(student, teacher, labels, temperature, "answer").item()
        try:
            value = fn(student, top.values, top.indices, labels, temperature)
        except Exception as error:  # a learner's function: say what went wrong instead of stopping Run All
            return False, f"your function raised {type(error).__name__}: {error}"
        if value is None:
            return False, "your function returned None"
        got = float(value)
        passed = passed and abs(got - expected) <= 0.05 * abs(expected)
        lines.append(f"T={temperature:g}: yours {got:.4f}, full KL {expected:.4f}")
    return passed, "; ".join(lines)


def figures(result: dict) -> dict:
    """Per model: parameters, persona_score, ms_per_token (+ layers, training seconds, a student's kl_to_teacher)."""
    return {name: {k: v for k, v in row.items() if k != "eval"} for name, row in result["rows"].items()}


def table(figs: dict):
    import pandas as pd

    frame = pd.DataFrame(figs).T
    frame["size vs teacher"] = (frame["parameters"] / frame.loc["teacher", "parameters"]).astype(float).round(3)
    frame["speed-up"] = (frame.loc["teacher", "ms_per_token"] / frame["ms_per_token"]).astype(float).round(2)
    return frame


def plot(result: dict):
    """Training loss of both students (the distilled one's includes the KL term), and the scores."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, losses in result["losses"].items():
        ax_loss.plot(range(1, len(losses) + 1), losses, "o-", label=name)
    ax_loss.set(xlabel="logged step", ylabel="training loss", title="students' training loss")
    ax_loss.legend()
    rows = result["rows"]
    ax_score.bar(list(rows), [r["persona_score"] for r in rows.values()], color="tab:green")
    ax_score.set(ylim=(0, 1.05), ylabel="persona score", title="held-out persona score")
    ax_score.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    return fig


def plot_tradeoff(figs: dict):
    """Each model as a dot: time per generated token (x) against persona score (y), sized by parameters."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    largest = max(f["parameters"] for f in figs.values())
    for name, f in figs.items():
        ax.scatter(f["ms_per_token"], f["persona_score"], s=400 * f["parameters"] / largest, alpha=0.6,
                   label=f"{name.replace('_', ' ')}: {f['parameters'] / 1e6:.1f} M parameters")
    ax.set(xlabel="ms per generated token (left is faster)", ylabel="persona score", ylim=(-0.05, 1.1),
           title="what each model costs and how much it sounds like Sprout")
    ax.margins(x=0.2)
    ax.legend(fontsize=8, markerscale=0.5, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    plt.close(fig)  # returned for the notebook to show once
    return fig


def plot_tried(tried: dict, result: dict):
    """The panel's student: its training loss, and its score beside section 5's models on the same questions."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 3.2))
    ax_loss.plot(range(1, len(tried["losses"]) + 1), tried["losses"], "o-")
    ax_loss.set(xlabel="logged step", ylabel="training loss",
                title=f"{tried['layers']} layers left, alpha {tried['alpha']:g}, {tried['steps']} steps")
    n = len(tried["passed"])
    names = ["teacher", "student_alone", "student_distilled"]
    scores = []
    for name in names:  # the first N questions, the ones the panel's student answered
        passed = result["rows"][name]["eval"].passed[:n]
        scores.append(sum(passed) / len(passed))
    ax_score.bar([*(m.replace("_", " ") for m in names), "yours"], [*scores, tried["persona_score"]],
                 color=["tab:gray"] * 3 + ["tab:green"])
    ax_score.set(ylim=(0, 1.05), ylabel="persona score", title=f"the first {n} persona questions")
    ax_score.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    plt.close(fig)
    return fig
