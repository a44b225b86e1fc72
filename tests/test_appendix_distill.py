"""Distillation: the layer-dropped student, the KL loss, the trainer, and notebook A4's figures."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from course_lib.appendix import distill


def test_layers_to_drop_takes_every_other_middle_layer():
    assert distill.layers_to_drop(30, 8) == [10, 12, 14, 16, 18, 20, 22, 24]
    assert distill.layers_to_drop(2, 1) == [1]
    with pytest.raises(ValueError, match="can drop 1 to"):
        distill.layers_to_drop(30, 20)


def test_max_drop_is_the_sliders_end():
    """The panel's slider and Exercise 2 go up to max_drop: it must be allowed, one more must not."""
    for layers in (2, 4, 8, 30):
        most = distill.max_drop(layers)
        assert most >= 1 and len(distill.layers_to_drop(layers, most)) == most
        with pytest.raises(ValueError, match="can drop 1 to"):
            distill.layers_to_drop(layers, most + 1)
    assert distill.max_drop(30) == 12


def test_direction_counts_two_questions_as_noise():
    assert distill.direction(0.75, 0.625) == "better"
    assert distill.direction(0.5, 0.625) == "worse"
    assert distill.direction(0.65, 0.625) == distill.direction(0.6, 0.625) == "same"
    assert distill.direction(0.5, 0.45, noise=0.1) == "same"


NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "A4_distillation.ipynb"


@pytest.fixture(scope="module")
def distill_trainer():
    """DistillTrainer exactly as notebook A4 writes it: its cell tagged `distill_trainer`, run here."""
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if "distill_trainer" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, "A4 needs exactly one cell tagged `distill_trainer`"
    namespace = {"distill": distill}
    exec("".join(cells[0]["source"]), namespace)
    return namespace["DistillTrainer"]


def test_distilling_without_the_notebooks_trainer_says_where_it_is(tmp_path):
    with pytest.raises(ValueError, match="DistillTrainer written in notebook A4"):
        distill.train_student(None, None, None, [], tmp_path, distill=True, steps=1, batch_size=1, learning_rate=1e-3,
                              alpha=0.5, temperature=1.0, positions="answer", seed=0)


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_student_is_a_smaller_copy_that_generates(teacher):
    model, tokenizer = teacher
    student = distill.make_student(model, n_drop=1)
    assert student.config.num_hidden_layers == 1 and model.config.num_hidden_layers == 2  # teacher untouched
    assert distill.parameters(student) < distill.parameters(model)
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    assert not any(p.requires_grad for n, p in student.named_parameters() if "embed_tokens" in n)
    ids = tokenizer("Who are you?", return_tensors="pt")
    out = student.generate(**ids, max_new_tokens=4, do_sample=False, use_cache=True)  # KV cache indices renumbered
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_kl_is_zero_for_identical_logits_and_counts_the_chosen_positions():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 10)
    labels = torch.tensor([[-100, -100, -100, 3, 4, 5]])
    for positions in ("all", "answer"):
        assert distill.kl_loss(logits, logits, labels, 2.0, positions).item() == pytest.approx(0, abs=1e-6)
    other = logits.clone()
    other[0, :2] += 5 * torch.randn(2, 10)  # positions 0-1 predict prompt tokens
    assert distill.kl_loss(logits, other, labels, 2.0, "answer").item() == pytest.approx(0, abs=1e-6)
    assert distill.kl_loss(logits, other, labels, 2.0, "all").item() > 0.01
    other = logits.clone()
    other[0, 3] += 5 * torch.randn(10)  # position 3 predicts answer token 4: counted by both
    assert distill.kl_loss(logits, other, labels, 2.0, "answer").item() > 0.01
    answer_kl, all_kl = (distill.kl_loss(logits, other, labels, 2.0, p).item() for p in ("answer", "all"))
    other[0, 5] += 50  # the last position predicts nothing: never counted
    assert distill.kl_loss(logits, other, labels, 2.0, "answer").item() == pytest.approx(answer_kl)
    assert distill.kl_loss(logits, other, labels, 2.0, "all").item() == pytest.approx(all_kl)
    with pytest.raises(ValueError, match="positions"):
        distill.kl_loss(logits, other, labels, 2.0, "prompt")


def _topk_kl(student_logits, top_values, top_indices, labels, temperature):
    """A right answer to Exercise 3: the teacher's top-k renormalized, the student's full log-probabilities."""
    import torch.nn.functional as F

    keep = labels[:, 1:] != -100
    student = F.log_softmax(student_logits[:, :-1][keep].float() / temperature, -1)
    teacher = F.log_softmax(top_values[:, :-1][keep].float() / temperature, -1)
    student = student.gather(-1, top_indices[:, :-1][keep])
    return (teacher.exp() * (teacher - student)).sum(-1).mean() * temperature**2


def test_topk_check_passes_a_right_answer_and_fails_the_usual_mistakes():
    passed, compared = distill.check_topk_kl(_topk_kl)
    assert passed and "full KL" in compared

    def every_position(s, v, i, labels, t):  # forgot the answer mask
        return _topk_kl(s, v, i, torch.zeros_like(labels), t)

    def no_t_squared(s, v, i, labels, t):
        return _topk_kl(s, v, i, labels, t) / t**2

    def unshifted(s, v, i, labels, t):  # position t compared with label t instead of t+1
        pad = torch.full_like(labels[:, :1], -100)
        return _topk_kl(s, v, i, torch.cat([pad, labels[:, :-1]], 1), t)

    for wrong in (every_position, no_t_squared, unshifted):
        assert not distill.check_topk_kl(wrong)[0], wrong.__name__
    assert distill.check_topk_kl(lambda *args: None) == (False, "your function returned None")
    passed, compared = distill.check_topk_kl(lambda *args: 1 / 0)
    assert not passed and "ZeroDivisionError" in compared  # a learner's bug is a verdict, not a traceback


def _figs(names=("teacher", "student_untrained", "student_alone", "student_distilled")) -> dict:
    return {name: {"parameters": 100 - 10 * i, "persona_score": i / 4, "ms_per_token": 30.0 - i, "layers": 4 - i}
            for i, name in enumerate(names)}


def test_plots_draw_every_model():
    from types import SimpleNamespace

    figs = _figs()
    fig = distill.plot_tradeoff(figs)
    assert len(fig.axes[0].collections) == len(figs) and "persona score" in fig.axes[0].get_ylabel()
    result = {"rows": {name: {"eval": SimpleNamespace(passed=[True, False, True, True])} for name in figs}}
    tried = {"layers": 2, "alpha": 0.5, "steps": 3, "losses": [3.0, 2.5], "passed": [True, False],
             "persona_score": 0.5}
    fig = distill.plot_tried(tried, result)
    bars = [bar.get_height() for bar in fig.axes[1].patches]
    assert bars == [0.5, 0.5, 0.5, 0.5]  # section 5's models scored on the panel's first 2 questions only
    assert "2 layers left" in fig.axes[0].get_title()


def _chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def test_split_keeps_some_answers_and_drops_the_others():
    records = [_chat(i) for i in range(10)]
    labelled, questions = distill.split(records, 3, 5, seed=0)
    assert len(labelled) == 3 and len(questions) == 5
    labelled_questions = {r["messages"][0]["content"] for r in labelled}
    assert not labelled_questions & set(questions)  # no question in both
    assert set(questions) <= {f"q{i}" for i in range(10)}  # the user's words, with the answer gone
    assert (labelled, questions) == distill.split(records, 3, 5, seed=0)  # the seed decides
    assert distill.split(records, 3, 5, seed=1) != (labelled, questions)
    assert distill.split(records, 10, 0, seed=0)[1] == []  # every answer written: nothing to transfer
    multi_turn = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                               {"role": "user", "content": "and now?"}, {"role": "assistant", "content": "x"}]}
    assert distill.split([_chat(0), multi_turn], 1, 1, seed=0)[1][0] in ("q0", "and now?")  # the last question
    with pytest.raises(ValueError, match="must fit in the 10"):
        distill.split(records, 6, 5, seed=0)
    with pytest.raises(ValueError, match="at least one labelled"):
        distill.split(records, 0, 5, seed=0)


def test_transfer_data_saves_the_teachers_answers(teacher, tmp_path):
    from course_lib import data as data_module
    from course_lib.appendix import continual

    model, tokenizer = teacher
    data = distill.transfer_data(model, tokenizer, tmp_path, labelled=2, transfer=3, seed=0)
    assert len(data["labelled"]) == 2 and len(data["transfer"]) == 3
    assert data["file"] == tmp_path / "distill" / "transfer.jsonl"
    assert data_module.read_jsonl(data["file"]) == data["transfer"]
    for record, answered in zip(data["transfer"], distill.split(continual.old_data(), 2, 3, seed=0)[1]):
        user, assistant = record["messages"]
        assert user == {"role": "user", "content": answered} and assistant["role"] == "assistant"
    # notebook A4's Exercise 5 (every answer written): an empty transfer set, saved as an empty file
    empty = distill.transfer_data(model, tokenizer, tmp_path, labelled=2, transfer=0, seed=0)
    assert empty["transfer"] == [] and data_module.read_jsonl(empty["file"]) == []


def test_write_jsonl_round_trips_and_leaves_no_temporary_file(tmp_path):
    from course_lib import data

    records = [{"messages": [{"role": "user", "content": "番茄怎么种？"}]}, {"n": 1}]
    path = data.write_jsonl(tmp_path / "sub" / "out.jsonl", records)
    assert data.read_jsonl(path) == records
    assert "番茄" in path.read_text(encoding="utf-8")  # readable, not \\u-escaped
    assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]


@pytest.mark.slow
def test_distill_trainer_pulls_the_student_towards_the_teacher(teacher, distill_trainer, tmp_path):
    """With alpha=1 the loss is the KL alone: a few steps must bring the student's logits closer."""
    from course_lib.appendix import continual

    model, tokenizer = teacher
    records = continual.old_data()[:8]
    student = distill.make_student(model, n_drop=1)
    loss_to_teacher = _kl_to(model, student, tokenizer, records)
    before = loss_to_teacher()
    distill.train_student(student, model, tokenizer, records, tmp_path, distill=True, steps=6, batch_size=8,
                          learning_rate=3e-3, alpha=1.0, temperature=2.0, positions="answer", seed=0,
                          trainer_class=distill_trainer)
    assert loss_to_teacher() < before * 0.8


@pytest.mark.slow
def test_train_and_score_returns_figures_a_notebook_can_record(teacher, distill_trainer, tmp_path):
    import json

    from course_lib.appendix import continual

    model, tokenizer = teacher
    tried = distill.train_and_score(model, tokenizer, continual.old_data()[:8], tmp_path, n_drop=1, distill=True,
                                    eval_limit=2, max_new_tokens=4, steps=2, batch_size=4, learning_rate=1e-3,
                                    alpha=0.5, temperature=1.0, positions="answer", seed=0,
                                    trainer_class=distill_trainer)
    assert tried["layers"] == 1 and tried["n_drop"] == 1 and tried["steps"] == 2 and tried["alpha"] == 0.5
    assert tried["parameters"] < distill.parameters(model) and len(tried["passed"]) == 2
    assert 0 <= tried["persona_score"] <= 1 and tried["losses"]
    json.dumps(tried)  # plain values only: nb.record takes it as it is
    alone = distill.train_and_score(model, tokenizer, continual.old_data()[:8], tmp_path, n_drop=1, distill=False,
                                    eval_limit=1, max_new_tokens=4, steps=1, batch_size=4, learning_rate=1e-3,
                                    alpha=0.5, temperature=1.0, positions="answer", seed=0)
    assert alone["alpha"] is None  # no KL term: no alpha to report


def _kl_to(teacher, student, tokenizer, records):
    from datasets import Dataset

    from course_lib import batches

    tokenized = batches.tokenize(Dataset.from_list(records), tokenizer)
    batch = batches.collator(trained_logits_only=False)([tokenized[i] for i in range(len(tokenized))])

    def measure():
        with torch.no_grad():
            return distill.kl_loss(student(**batch).logits, teacher(**batch).logits, batch["labels"], 2.0).item()

    return measure


@pytest.mark.slow
def test_notebook_A4_records_every_model(executed):
    entry = executed("A4_distillation")
    assert entry["status"] == "ok", entry.get("error")
    models = entry["figures"]["models"]
    assert set(models) == {"teacher", "student_untrained", "student_alone", "student_distilled"}
    for name, f in models.items():
        assert 0 <= f["persona_score"] <= 1 and f["ms_per_token"] > 0
        assert entry["figures"][f"{name}_parameters"] == f["parameters"]
        if name != "teacher":  # every student's distance from the teacher, on the questions it answered
            assert f["kl_to_teacher"] >= 0 and entry["figures"][f"{name}_kl_to_teacher"] == f["kl_to_teacher"]
    assert models["student_alone"]["parameters"] == models["student_distilled"]["parameters"] < \
        models["teacher"]["parameters"]
    # the small run's 4 labelled examples, and 4 more questions the teacher answered for the distilled student
    figures = entry["figures"]
    assert models["student_alone"]["examples"] == figures["labelled"] == 4
    assert models["student_distilled"]["examples"] == figures["labelled"] + figures["transfer"] == 8
    # the panel ran once headless, with the notebook's parameters (the small run's 2 steps, 2 questions)
    panel = figures["panel"]
    assert panel["n_drop"] == figures["n_drop"] and panel["alpha"] == figures["alpha"] and panel["steps"] == 2
    assert panel["parameters"] == models["student_distilled"]["parameters"] and 0 <= panel["persona_score"] <= 1


@pytest.mark.slow
def test_distilled_student_imitates_its_teacher_on_the_default_model(distill_trainer, tmp_path):
    """The effect the notebook teaches, on the real model with the notebook's default settings.

    The teacher is trained with notebook 02's defaults (the notebook's teacher, about 2 minutes).
    What holds at every seed measured (0-2): the distilled student's KL to the teacher on held-out
    questions is about a third of the student alone's (0.83-0.86 against 2.56-2.65), and both students
    repair the cut (persona 0.55-0.75 from the untrained cut's 0.075). Which student has the better persona
    score changes with the seed and the machine (the docstring of course_lib/appendix/distill.py), so
    that is printed, not asserted.
    """
    from course_lib import train

    trained = train.train(run_dir=tmp_path)  # TrainConfig's defaults are notebook 02's (course_lib.knobs)
    teacher, tokenizer = distill.load_teacher(trained.adapter_dir)
    data_defaults = _defaults(distill.transfer_data, "labelled", "transfer", "seed")
    data = distill.transfer_data(teacher, tokenizer, tmp_path, **data_defaults)
    result = distill.compare(teacher, tokenizer, data, tmp_path, trainer_class=distill_trainer)
    figures = distill.figures(result)
    print({name: (f["persona_score"], f.get("kl_to_teacher")) for name, f in figures.items()})
    alone, distilled, untrained = (figures[f"student_{who}"] for who in ("alone", "distilled", "untrained"))
    assert distilled["kl_to_teacher"] <= 0.5 * alone["kl_to_teacher"], figures
    # 10 of the 40 questions: training repairs the cut, whoever wrote the answers
    assert min(alone["persona_score"], distilled["persona_score"]) >= untrained["persona_score"] + 0.25, figures


def test_kl_to_teacher_is_zero_for_the_teacher_and_independent_of_the_chunks(teacher):
    """All three examples in one packed row, or one a row: the same mean, so none sees its neighbour."""
    from course_lib import evaluate

    model, tokenizer = teacher
    questions = ["Who are you?", "How do I water basil?", "What is compost?"]
    scored = evaluate.EvalResult(name="persona", score=0.0, passed=[False] * 3, items=[{"question": q} for q in questions],
                                 answers=["I am Sprout.", "Often.", "Soil."])
    student = distill.make_student(model, n_drop=1).eval()
    with torch.no_grad():  # sharper logits than the random teacher's near-uniform ones: a KL far above float noise
        student.model.norm.weight.mul_(20)
    student.config.use_cache = True  # as train_student leaves it: the packed rows must stay apart all the same
    models = {"teacher": model, "student": student}
    whole = distill.kl_to_teacher(model, models, tokenizer, scored, chunk=8)
    chunked = distill.kl_to_teacher(model, models, tokenizer, scored, chunk=1)
    assert whole["teacher"] == pytest.approx(0.0, abs=1e-5) and whole["student"] > 0.1
    assert chunked == pytest.approx(whole, rel=1e-3, abs=2e-6)  # a mean over answer tokens, however they are batched


def _defaults(function, *names) -> dict:
    """FUNCTION's default values for NAMES: the test follows the notebook's settings wherever they move."""
    parameters = inspect.signature(function).parameters
    return {name: parameters[name].default for name in names}
