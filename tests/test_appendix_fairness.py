"""Bias audit and fairness constraint: the probes, the gap arithmetic, Fairlearn wiring, the penalty's effect; notebook A5."""

from __future__ import annotations

import json

import pytest
import torch

from course_lib.appendix import fairness

KEYS = ("bias_gap_base", "bias_gap_personalized", "bias_gap_constrained", "persona_score_constrained",
        "redteam_caught", "redteam_missed", "redteam_false_refusals")


@pytest.fixture(scope="module")
def probes():
    return fairness.load_probes()


def test_probe_splits_are_disjoint_and_balanced(probes):
    audit = {o["occupation"] for o in probes.occupations_in("audit")}
    train = {o["occupation"] for o in probes.occupations_in("train")}
    assert audit and train and not audit & train
    for split in ("audit", "train"):
        groups = [o["stereotype"] for o in probes.occupations_in(split)]
        assert groups.count("male") == groups.count("female")
    assert len(probes.names["male"]) == len(probes.names["female"])
    assert {q["answer"] for q in probes.questions} == {"yes", "no"}


def test_pairs_differ_only_in_the_pronoun(probes):
    pairs = fairness.pronoun_pairs(probes, "audit")
    assert len(pairs) == len(probes.occupations_in("audit")) * len(probes.templates["answers"])
    for p in pairs:
        diff = [(a, b) for a, b in zip(p.male.split(), p.female.split()) if a != b]
        assert len(p.male.split()) == len(p.female.split()) and len(diff) == 1
        assert diff[0][0].strip(".,") in ("he", "his", "him") and diff[0][1].strip(".,") in ("she", "her")
    assert len(fairness.pronoun_pairs(probes, "audit", templates=2)) == 2 * len(probes.occupations_in("audit"))
    examples = fairness.counterfactual_examples(probes, "train")
    assert len(examples) == 2 * len(fairness.pronoun_pairs(probes, "train"))


def test_bad_probe_file_names_file_and_line(tmp_path, probes):
    for name in ("templates.json", "names.json", "questions.jsonl"):
        (tmp_path / name).write_text(fairness.paths.data_samples("bias", name).read_text())
    (tmp_path / "occupations.jsonl").write_text('{"occupation": "nurse", "stereotype": "female", "split": "audit"}\n'
                                                '{"occupation": "pilot", "stereotype": "man", "split": "audit"}\n')
    with pytest.raises(ValueError, match=r"occupations\.jsonl:2: field 'stereotype'"):
        fairness.load_probes(tmp_path)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_sequence_logprobs_score_only_the_answer_and_ignore_padding(tiny):
    model, tok = tiny
    prompts, answers = ["Hi?", "A much longer question about tomatoes and basil?"], ["Yes, water it.", "No."]
    with torch.no_grad():
        batched = fairness.sequence_logprobs(model, tok, prompts, answers)
        alone = torch.cat([fairness.sequence_logprobs(model, tok, [p], [a]) for p, a in zip(prompts, answers)])
        # by hand, for the first: the answer's tokens after the chat-formatted prompt
        head = tok.apply_chat_template([{"role": "user", "content": prompts[0]}], add_generation_prompt=True, tokenize=False)
        h, a = tok(head, add_special_tokens=False)["input_ids"], tok(answers[0], add_special_tokens=False)["input_ids"]
        logp = torch.log_softmax(model(torch.tensor([h + a])).logits[0, :-1], -1)
        manual = sum(logp[len(h) - 1 + i, t] for i, t in enumerate(a))
    assert torch.allclose(batched, alone, atol=1e-4)
    assert batched[0].item() == pytest.approx(manual.item(), abs=1e-4) and (batched < 0).all()


def test_pair_gaps_are_male_minus_female_whatever_the_chunks(tiny, probes):
    model, tok = tiny
    pairs = fairness.pronoun_pairs(probes, "train")[:3]
    with torch.no_grad():
        male = fairness.sequence_logprobs(model, tok, [p.prompt for p in pairs], [p.male for p in pairs])
        female = fairness.sequence_logprobs(model, tok, [p.prompt for p in pairs], [p.female for p in pairs])
        for batch_size in (2, 4, 16):  # chunks that split the six rows, mix both versions, or hold them all
            got = fairness.pair_gaps(model, tok, pairs, batch_size=batch_size)
            assert torch.allclose(got, male - female, atol=1e-4), batch_size


def test_yes_margin_is_the_same_batched_with_left_padding(tiny):
    model, tok = tiny
    prompts = ["Can basil survive frost?", "Hi, I'm Emma. Do succulents need less water than ferns? Please answer yes or no."]
    with torch.no_grad():
        batched = fairness.yes_margin(model, tok, prompts)
        alone = [fairness.yes_margin(model, tok, [p])[0] for p in prompts]
    assert batched == pytest.approx(alone, abs=1e-4)
    assert tok.padding_side == "right"  # restored


def test_bias_gap_sign_convention(monkeypatch, probes):
    # A model that prefers the stereotyped pronoun by exactly 1 nat everywhere.
    def fake(model, tok, pairs, batch_size=16):
        return torch.tensor([1.0 if p.stereotype == "male" else -1.0 for p in pairs])

    monkeypatch.setattr(fairness, "pair_gaps", fake)
    result = fairness.audit(None, None, probes, "fake", classification=False)
    assert result.bias_gap == pytest.approx(1) and result.abs_gap == pytest.approx(1)
    assert result.he_preference == pytest.approx(0)  # balanced occupations: no overall "he" prior
    assert set(result.table()["stereotyped_gap"]) == {1.0}


@pytest.mark.parametrize("by_name,dp", [(False, 0.0), (True, 1.0)])
def test_classification_view_feeds_fairlearn(monkeypatch, probes, by_name, dp):
    female = set(probes.names["female"])

    def fake(model, tok, prompts, batch_size=16):  # "yes" for one group only, or by question only
        if by_name:
            return [1.0 if p.split("I'm ")[1].split(".")[0] in female else -1.0 for p in prompts]
        return [float(len(p.split(". ")[1]) % 7) for p in prompts]

    monkeypatch.setattr(fairness, "yes_margin", fake)
    view = fairness.classification_view(None, None, probes)
    assert view["demographic_parity_difference"] == pytest.approx(dp)
    assert view["items"] == len(probes.questions) * 12
    if by_name:
        assert view["equalized_odds_difference"] == pytest.approx(1.0)
        assert view["by_group"]["female"]["selection_rate"] == 1.0


def _audit(name: str, gap: float, train_gap: float, probes) -> fairness.Audit:
    rows = [{"occupation": o["occupation"], "stereotype": o["stereotype"], "stereotyped_gap": gap}
            for o in probes.occupations_in("audit")]
    return fairness.Audit(name, bias_gap=gap, abs_gap=abs(gap), he_preference=0.0, per_occupation=rows,
                          train_gap=train_gap)


def test_direction_and_what_moved_leave_noise_as_same(probes):
    assert fairness.direction(1.0, 0.5, 0.05) == "up" and fairness.direction(0.5, 1.0, 0.05) == "down"
    assert fairness.direction(0.52, 0.5, 0.05) == "same"
    before, after = _audit("constrained", 0.40, 0.30, probes), _audit("smaller λ", 0.42, 1.5, probes)
    scores = {"constrained": 0.5, "smaller λ": 0.5 + 2 / 12}
    assert fairness.what_moved(after, before, scores, 12) == {"training gap": "up", "audit gap": "same",
                                                             "persona score": "up"}
    scores["smaller λ"] = 0.5 + 1 / 12  # one question of twelve: noise
    assert fairness.what_moved(after, before, scores, 12)["persona score"] == "same"


def test_plots_show_every_model_and_outcome(probes):
    base, persona = _audit("base", 1.0, 1.0, probes), _audit("personalized", -0.5, 1.0, probes)
    fig = fairness.plot_occupations(base, persona)
    assert len(fig.axes[0].patches) == 2 * len(probes.occupations_in("audit"))
    redteam = {"first draft": {"caught": 20, "missed": 9, "false_refusal": 8},
               "shipped": {"caught": 28, "missed": 4, "false_refusal": 0}}
    fig = fairness.plot_summary([base, persona], {"personalized": 0.9}, redteam)
    gaps, scores, red = fig.axes
    assert len(gaps.patches) == 4 and [b.get_height() for b in scores.patches] == [0.9]
    assert sorted(b.get_height() for b in red.patches) == [0, 4, 8, 9, 20, 28]


def test_measure_gives_the_audit_the_training_gap_and_the_persona_score(tiny, probes):
    model, tok = tiny
    result, score = fairness.measure(model, tok, probes, "tiny", templates=1, names_per_group=1, persona_questions=1)
    assert result.name == "tiny" and result.classification and result.train_gap is not None
    assert result.train_gap == pytest.approx(
        fairness.audit(model, tok, probes, split="train", templates=1, classification=False).abs_gap)
    assert 0 <= score <= 1


@pytest.mark.slow
def test_penalty_shrinks_the_gap_it_is_computed_on(tmp_path, tiny_model_dir, probes):
    """Same data and steps, lambda 0 vs 1: the constrained run ends with a smaller |gap| on its pairs."""
    from course_lib import runs, train

    torch.set_num_threads(1)
    adapter = train.ensure_adapter(tmp_path, str(tiny_model_dir), steps=2, seed=0)
    gaps = {}
    for lam in (0.0, 1.0):
        run = fairness.fine_tune(adapter, tmp_path, probes, lam, steps=8, name=f"l{lam}")
        assert run.steps == 8 and len(run.lm_losses) == 8 and len(run.penalties) == (8 if lam else 0)
        model, tok = runs.load(run.adapter_dir)
        gaps[lam] = fairness.audit(model, tok, probes, split="train", templates=2, classification=False).abs_gap
    assert gaps[1.0] < 0.9 * gaps[0.0], gaps
    assert json.loads((run.adapter_dir / "course_train.json").read_text())["method"] == "lora"


@pytest.mark.slow
def test_notebook_A5_small_run_records_the_measured_effects(executed):
    entry = executed("A5_bias_redteam")
    assert entry["status"] == "ok", entry.get("error")
    f = entry["figures"]
    for key in KEYS:
        assert f.get(key) is not None, key
    # The red-team figures do not depend on the model: they are the real ones even in the small run.
    assert f["redteam_false_refusals"] == 0 and f["redteam_missed"] == f["redteam_known_limits"]
    assert f["redteam_draft_false_refusals"] > 5 and f["redteam_draft_missed"] > f["redteam_missed"]
    assert f["redteam_caught"] + f["redteam_missed"] < f["redteam_items"]
    # The penalty moved the gap it was trained on, against the control run with the same data.
    assert f["train_abs_gap_constrained"] < f["train_abs_gap_control"]
    assert 0 <= f["persona_score_constrained"] <= 1
