"""The variant table: measure each variant the same way, and set it beside the fp32 baseline.

``Bench.add`` measures what notebook 04 built with the real calls (a saved model, an .onnx or a
.gguf file); ``Bench.run`` builds a variant with the same calls (variants.py) and measures it.
The bench remembers what it measured (a re-run with the same settings is free), times every
variant in turns with the fp32 model, and checks claims common in quantization tutorials against
this machine's figures. ``panel`` is notebook 04's control for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import evaluate, models
from course_lib.quantize.measure import (
    EvalData,
    _free,
    log_axis,
    ms_per_token,
    parameter_split,
    perplexity_of_runner,
    predict_bytes,
)
from course_lib.quantize.variants import (
    DEFAULT_VARIANTS,
    GGUF_TYPES,
    RUNTIMES,
    VARIANTS,
    Built,
    build,
    converter_available,
    fresh_folder,
    wrap,
)
from course_lib.runtimes import NativeCrash
from course_lib.ui import panel as make_panel

REFERENCE_EXAMPLES = 4  # validation examples whose logits every variant is compared on, position by position


# --------------------------------------------------------------------------- measuring one variant


class Line(str):
    """A sentence that Jupyter shows as text, without the quotes of a string's repr."""

    def __repr__(self) -> str:
        return str(self)


@dataclass
class Result:
    variant: str
    runtime: str
    size_mb: float
    weight_mb: float
    ppl: float = float("nan")
    persona_score: float = float("nan")
    ms_per_token: float = float("nan")
    max_abs_logit_diff: float = float("nan")
    top1_agreement: float = float("nan")
    build_s: float = 0.0
    measure_s: float = 0.0
    notes: str = ""
    answers: list = field(default_factory=list, repr=False)
    extra: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def measure(built: Built, tokenizer, data: EvalData, reference=None, baseline_runner=None) -> Result:
    """Every figure of one variant.

    REFERENCE: the baseline's logits on the first examples (for the logit columns); BASELINE_RUNNER:
    the baseline, timed in turns with this variant so that their speed ratio is a fair one. A runtime
    that crashes in its child process (llama.cpp built for the wrong CPU) leaves its figures NaN and
    its sentence in the notes.
    """
    started = time.perf_counter()
    runtime = getattr(built.runner, "runtime", RUNTIMES.get(built.variant, "PyTorch"))
    result = Result(built.variant, runtime, built.disk_bytes / 1e6, built.memory_bytes / 1e6,
                    notes="; ".join(built.notes), extra=built.extra)
    if built.runner is None:  # written but cannot be run here (said in notes)
        return result
    try:
        _measure_runner(built, tokenizer, data, result, reference, baseline_runner)
    except NativeCrash as crash:  # llama.cpp died in its child process: said in notes, the bench goes on
        result.notes = "; ".join(filter(None, [result.notes, f"not measured: {crash}"]))
        result.extra["error"] = str(crash)
    result.measure_s = time.perf_counter() - started
    return result


def _measure_runner(built: Built, tokenizer, data: EvalData, result: Result, reference, baseline_runner) -> None:
    """Fill RESULT's perplexity, logit, persona and speed figures by running BUILT's runner."""
    import numpy as np

    ppl, kept = perplexity_of_runner(built.runner, data.examples, keep_logits=REFERENCE_EXAMPLES)
    result.ppl = ppl
    result.extra = {**built.extra, "logits": kept}
    if reference is not None:
        result.max_abs_logit_diff = max(float(np.abs(a - b).max()) for a, b in zip(kept, reference))
        agree = [float((a.argmax(-1) == b.argmax(-1)).mean()) for a, b in zip(kept, reference)]
        result.top1_agreement = float(np.mean(agree))
    if data.items:
        answers = built.runner.answers(tokenizer, data)
        result.persona_score = evaluate.score_answers("persona", data.items, answers).score
        result.answers = answers
    if data.latency_tokens:
        runners = [built.runner] + ([baseline_runner] if baseline_runner is not None else [])
        times = ms_per_token(runners, data.latency_prompt, data.latency_tokens)
        result.ms_per_token = times[0]
        if len(times) > 1:
            result.extra["baseline_ms_per_token"] = times[1]  # fp32, measured in the same minute


# --------------------------------------------------------------------------- the bench and its table


SOURCE_NOTE = ("Note: the offline default's weights are a dequantized 4-bit (Q4_1) copy of SmolLM2-135M-Instruct, "
               "stored as fp32. Every ratio here is measured against that fp32 model (with the adapter merged), not "
               "against the original full-precision weights; re-quantizing weights that already went through a "
               "4-bit grid is not the same experiment, and its losses can differ either way from those of the hub "
               "copy (MODEL=\"HuggingFaceTB/SmolLM2-135M-Instruct\" online).")


class Bench:
    """Builds and measures variants of one merged model, remembering results (re-runs are free)."""

    def __init__(self, model_dir, tokenizer, data: EvalData, work_dir, sparsity: float = 0.2,
                 gguf_type: str = "q8_0", int8_skip: tuple = ()):
        self.model_dir, self.tokenizer, self.data = Path(model_dir), tokenizer, data
        self.work_dir, self.sparsity, self.gguf_type = Path(work_dir), sparsity, gguf_type
        self.int8_skip = tuple(int8_skip)
        self.split = parameter_split(model_dir)
        self.results: dict[str, Result] = {}
        self.skipped: dict[str, str] = {}
        self._reference = None
        self._baseline = None  # the fp32 runner, kept to time every variant beside it

    def _settings(self, variant: str) -> dict:
        return {"pruned": {"sparsity": self.sparsity}, "gguf": {"gguf_type": self.gguf_type},
                "int8_dynamic": {"int8_skip": self.int8_skip}}.get(variant, {})

    def run(self, variant: str, sparsity: float | None = None, gguf_type: str | None = None,
            int8_skip: tuple | None = None) -> Result | None:
        """Build and measure VARIANT (the fp32 baseline first, if not yet measured)."""
        self.sparsity = self.sparsity if sparsity is None else sparsity
        self.gguf_type = gguf_type or self.gguf_type
        self.int8_skip = self.int8_skip if int8_skip is None else tuple(int8_skip)
        if variant != "fp32" and "fp32" not in self.results:
            self.run("fp32")
        cached = self.results.get(variant)
        if cached is not None and cached.settings == self._settings(variant) and "error" not in cached.extra:
            return cached  # (a crashed runtime is tried again: the learner may have rebuilt it meanwhile)
        if variant == "gguf" and converter_available():
            self.skipped[variant] = converter_available()
            print(f"gguf skipped: {self.skipped[variant]}")
            return None
        started = time.perf_counter()
        built = build(variant, self.model_dir, self.work_dir, sparsity=self.sparsity, gguf_type=self.gguf_type,
                      int8_skip=self.int8_skip)
        return self._keep(variant, built, time.perf_counter() - started)

    def folder(self, variant: str) -> Path:
        """An empty WORK_DIR/VARIANT to save a variant you build into (an earlier build there is removed)."""
        return fresh_folder(self.work_dir, variant)

    def add(self, variant: str, made, folder=None) -> Line:
        """Measure what you built as VARIANT: a model saved in FOLDER, or an .onnx or .gguf file.

        The fp32 baseline is measured first if it is not yet; the result takes the bench's settings
        (``sparsity``, ``gguf_type``) as its own. Returns the variant's line (``line``).
        """
        if variant != "fp32" and "fp32" not in self.results:
            self.run("fp32")
        self._keep(variant, wrap(variant, made, folder), 0.0)
        return self.line(variant)

    def _keep(self, variant: str, built: Built, build_s: float) -> Result:
        """Measure BUILT beside the baseline and keep its result; a variant's model is freed afterwards."""
        try:
            result = measure(built, self.tokenizer, self.data, reference=self._reference,
                             baseline_runner=self._baseline if variant != "fp32" else None)
        finally:
            if variant != "fp32":
                _free(built.runner)
                built.runner = None
        result.build_s, result.settings = build_s, self._settings(variant)
        if "error" in result.extra:  # the notes column of the table holds it too, but a table cuts long text
            print(f"{variant}: {result.extra['error']}")
        if variant == "fp32":
            self._reference, self._baseline = result.extra.get("logits"), built.runner
            result.max_abs_logit_diff, result.top1_agreement = 0.0, 1.0
        self.results[variant] = result
        return result

    @property
    def model(self):
        """The fp32 baseline model (transformers), loaded once for the whole bench."""
        if self._baseline is None:
            self.run("fp32")
        return self._baseline.model

    def close(self):
        """Free the fp32 model kept for side-by-side timing."""
        _free(self._baseline)
        self._baseline = None

    def run_many(self, variants, **settings) -> object:
        for variant in variants:
            self.run(variant, **settings)
        return self.table([v for v in variants if v in self.results])

    def order(self) -> list[str]:
        """The measured variants, in the registry's order, then any you added under names of your own."""
        return [v for v in VARIANTS if v in self.results] + [v for v in self.results if v not in VARIANTS]

    def line(self, variant: str) -> Line:
        """One sentence of VARIANT's figures, each beside fp32's, or why it was not measured."""
        r = self.results.get(variant)
        if r is None:
            return Line(self.skipped.get(variant, f"{variant} not measured: add it to VARIANTS."))
        parts = [f"{variant} ({r.runtime}): {r.size_mb:.1f} MB on disk (x{self.ratio(variant, 'size_mb'):.2f})"]
        if r.ppl == r.ppl:
            parts.append(f"perplexity x{self.ratio(variant, 'ppl'):.3f}")
        if r.persona_score == r.persona_score:
            parts.append(f"persona score {r.persona_score:.2f}")
        if r.ms_per_token == r.ms_per_token and variant != "fp32":
            parts.append(f"{r.ms_per_token:.1f} ms/token (x{self.ratio(variant, 'ms_per_token'):.2f})")
        elif r.ms_per_token == r.ms_per_token:
            parts.append(f"{r.ms_per_token:.1f} ms/token")
        return Line(", ".join(parts) + (f"   [{r.notes}]" if r.notes else ""))

    def table(self, variants=None):
        """The comparison table: one row per measured variant, ratios against the fp32 baseline."""
        import pandas as pd

        base = self.results.get("fp32")
        rows = []
        for variant in variants or self.order():
            r = self.results[variant]
            rows.append({
                "variant": variant, "runtime": r.runtime, "predicted MB": self._predicted_mb(variant, r),
                "size MB": round(r.size_mb, 1),
                "size ratio": _ratio(r.size_mb, base.size_mb if base else None),
                "weight memory MB": round(r.weight_mb, 1), "perplexity": _round(r.ppl, 3),
                "ppl ratio": _ratio(r.ppl, base.ppl if base else None),
                "persona score": _round(r.persona_score, 2), "ms/token": _round(r.ms_per_token, 1),
                "ms/token ratio": _round(self.ratio(variant, "ms_per_token"), 2),
                "max |Δlogit| vs fp32": _round(r.max_abs_logit_diff, 4),
                "top-1 agreement": _round(r.top1_agreement, 3), "notes": r.notes,
            })
        return pd.DataFrame(rows).set_index("variant") if rows else pd.DataFrame()

    def _predicted_mb(self, variant: str, r: Result) -> float | None:
        if r.settings.get("int8_skip") or variant not in VARIANTS:
            return None
        return round(predict_bytes(variant, self.split, r.settings.get("gguf_type", "q8_0")) / 1e6, 1)

    def ratio(self, variant: str, what: str) -> float:
        """VARIANT's WHAT over the fp32 baseline's; speed against fp32 timed in the same minute."""
        base, r = self.results.get("fp32"), self.results.get(variant)
        if base is None or r is None:
            return float("nan")
        reference = getattr(base, what)
        if what == "ms_per_token":
            reference = r.extra.get("baseline_ms_per_token", reference)
        return getattr(r, what) / reference if reference and reference == reference else float("nan")

    def figures(self) -> dict:
        """Per variant: size_mb, size_ratio, ppl_ratio, ms_per_token, persona_score (for nb.record)."""
        out = {}
        for variant, r in self.results.items():
            out.update({f"{variant}_size_mb": round(r.size_mb, 2), f"{variant}_size_ratio": self.ratio(variant, "size_mb"),
                        f"{variant}_ppl_ratio": self.ratio(variant, "ppl"), f"{variant}_ms_per_token": r.ms_per_token,
                        f"{variant}_persona_score": r.persona_score,
                        f"{variant}_ms_per_token_ratio": self.ratio(variant, "ms_per_token")})
        if "onnx" in self.results:
            out["onnx_max_abs_logit_diff"] = self.results["onnx"].max_abs_logit_diff
            out["onnx_top1_agreement"] = self.results["onnx"].top1_agreement
        if "pruned" in self.results:
            out["pruned_sparsity_measured"] = self.results["pruned"].extra.get("measured")
        return out

    def claims(self):
        """Claims common in quantization tutorials beside what this machine measured, and whether each holds here."""
        import pandas as pd

        rows = []
        for claim, variant, check, source in CLAIMS:
            if variant not in self.results or (variant != "fp32" and "fp32" not in self.results):
                continue
            checked = check(self, variant)
            if checked is None:  # a figure this claim needs was not measured (e.g. no llama.cpp here)
                continue
            measured, holds = checked
            rows.append({"claim": claim, "variant": variant, "measured here": measured, "holds here?": holds,
                         "source": source})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """One line per measured variant: size, perplexity, persona and speed, with their ratios."""
        return "\n".join(self.line(v) for v in self.order())

    def answers(self, variants=("fp32", "nf4", "gguf"), n: int = 3):
        """The first N persona questions with each variant's greedy answer (a DataFrame)."""
        import pandas as pd

        shown = [v for v in variants if v in self.results and self.results[v].answers]
        rows = [{"question": item["question"], **{v: self.results[v].answers[i] for v in shown}}
                for i, item in enumerate(self.data.items[:n])]
        return pd.DataFrame(rows)

    def plot(self):
        """Every measured variant against fp32: size on disk (with its prediction), perplexity and time per token."""
        import matplotlib.pyplot as plt

        names = self.order()
        rows = list(range(len(names)))
        fig, (ax_size, ax_ppl, ax_speed) = plt.subplots(1, 3, figsize=(12, 1.6 + 0.4 * len(names)), sharey=True)
        ax_size.barh(rows, [self.results[v].size_mb for v in names], color="tab:blue")
        predicted = [(row, self._predicted_mb(v, self.results[v])) for row, v in zip(rows, names)]
        predicted = [(row, mb) for row, mb in predicted if mb is not None]
        ax_size.scatter([mb for _, mb in predicted], [row for row, _ in predicted], marker="|", s=300, color="black")
        ax_size.set(xlabel="size on disk (MB); black tick: predicted", title="smaller?")
        _ratio_bars(ax_ppl, rows, [self.ratio(v, "ppl") for v in names], "perplexity / fp32's (log scale)", "worse?")
        _ratio_bars(ax_speed, rows, [self.ratio(v, "ms_per_token") for v in names],
                    "time per token / fp32's, timed side by side (log scale)", "faster?")
        ax_size.set_yticks(rows, names)
        ax_size.invert_yaxis()
        fig.tight_layout()
        return fig


def _ratio_bars(ax, rows, ratios, xlabel: str, title: str) -> None:
    """Bars from 1 (as good as fp32) to each ratio, on a log scale: 0.5 and 2 stand equally far from 1."""
    known = [r for r in ratios if r == r and r > 0]
    for row, ratio in zip(rows, ratios):
        if ratio != ratio or ratio <= 0:
            ax.text(1, row, " not measured", va="center", fontsize=8, color="grey")
            continue
        color = "tab:green" if ratio < 0.98 else "tab:red" if ratio > 1.02 else "tab:gray"
        ax.barh(row, ratio - 1, left=1, color=color)
        ax.text(ratio, row, f" x{ratio:.2f} ", va="center", ha="left" if ratio >= 1 else "right", fontsize=8)
    low, high = min(known + [1.0]), max(known + [1.0])
    log_axis(ax, min(0.5, low / 1.6), max(2.0, high * 1.6))
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set(xlabel=xlabel, title=title)


def panel(bench: Bench, variants=DEFAULT_VARIANTS, sparsity: float = 0.2, gguf_type: str = "q8_0"):
    """Pick variants, a sparsity and a GGUF type, press Run: missing ones are built and measured, and
    the bench's figure is drawn again with them.

    Headless (papermill) it runs once with the given values; already measured variants cost nothing.
    """
    import ipywidgets as widgets

    controls = {
        "variants": widgets.SelectMultiple(options=VARIANTS, value=tuple(variants), rows=len(VARIANTS),
                                           description="variants"),
        "sparsity": widgets.FloatSlider(value=sparsity, min=0.0, max=0.9, step=0.05, description="sparsity",
                                        continuous_update=False),
        "gguf_type": widgets.Dropdown(options=GGUF_TYPES, value=gguf_type, description="GGUF type"),
    }

    def run(variants, sparsity, gguf_type):
        import matplotlib.pyplot as plt

        bench.run_many(list(variants), sparsity=sparsity, gguf_type=gguf_type)
        bench.plot()  # every variant measured so far, the new ones included
        plt.show()

    return make_panel(run, controls, button="Build and measure")


def source_note(model_name: str) -> str:
    """What the baseline is made of, to print beside the table."""

    if model_name in models.PRESETS and models.resolve(model_name).kind == "package":
        return SOURCE_NOTE
    return f"Baseline: {model_name} with the adapter merged, in fp32; every ratio is against it."


# --------------------------------------------------------------------------- the claims, checked here


def _round(value, digits):
    return round(value, digits) if value == value else None


def _ratio(value, base, digits: int = 3):
    if base in (None, 0) or value != value or base != base:
        return None
    return round(value / base, digits)


def _size_claim(target: float, margin: float = 0.05):
    def check(bench: Bench, variant: str):
        ratio = bench.ratio(variant, "size_mb")
        if ratio != ratio:
            return None
        return f"{1 - ratio:.0%} smaller (size ratio {ratio:.2f})", "yes" if ratio <= target + margin else "no"
    return check


def _speed_claim(bench: Bench, variant: str):
    ratio = bench.ratio(variant, "ms_per_token")
    if ratio != ratio:
        return None
    verdict = "yes" if ratio < 0.95 else "no" if ratio > 1.05 else "no difference"
    return f"{ratio:.2f}x the fp32 time per token", verdict


def _quality_claim(limit: float):
    def check(bench: Bench, variant: str):
        ratio = bench.ratio(variant, "ppl")
        persona = bench.results[variant].persona_score
        base = bench.results["fp32"].persona_score
        if ratio != ratio:
            return None
        text = f"perplexity x{ratio:.3f}; persona {persona:.2f} (fp32 {base:.2f})"
        return text, "yes" if ratio <= limit and persona >= base - 0.15 else "no"
    return check


def _pruning_claim(bench: Bench, variant: str):
    size, speed = bench.ratio(variant, "size_mb"), bench.ratio(variant, "ms_per_token")
    if speed != speed:
        return None
    return (f"size ratio {size:.2f}, time per token x{speed:.2f}",
            "no: zeros are stored and multiplied like any weight" if size > 0.95 else "yes")


def _parity_claim(bench: Bench, variant: str):
    r = bench.results[variant]
    if r.max_abs_logit_diff != r.max_abs_logit_diff:
        return None
    return (f"max |Δlogit| {r.max_abs_logit_diff:.1e}, top-1 agreement {r.top1_agreement:.1%}",
            "yes" if r.max_abs_logit_diff < 1e-3 else "no")


# Where a claim comes from: a paper or documentation that makes it, or the tutorials that repeat it.
TUTORIALS = "common in quantization tutorials"
ARITHMETIC = "bits-per-weight arithmetic, repeated by tutorials"
LLM_INT8 = "LLM.int8() paper (Dettmers et al., 2022), for its outlier-aware int8"
QLORA = "QLoRA paper (Dettmers et al., 2023), on 7B-65B models"
PRUNING = "common in pruning tutorials"
LLAMA_CPP = "llama.cpp's description of Q8_0 (blocks of 32, one fp16 scale)"

# (claim as tutorials state it, the variant it is about, how to check it on this machine, its source)
CLAIMS = [
    ("FP32 to INT8: 75% smaller", "int8_dynamic", _size_claim(0.25), ARITHMETIC),
    ("FP32 to INT8: 75% smaller", "bnb_int8", _size_claim(0.25), ARITHMETIC),
    ("FP32 to INT8: 75% smaller", "int8_weight_only", _size_claim(0.25), ARITHMETIC),
    ("INT8 is faster than FP32", "int8_dynamic", _speed_claim, TUTORIALS),
    ("INT8 is faster than FP32", "bnb_int8", _speed_claim, TUTORIALS),
    ("INT8 is faster than FP32", "int8_weight_only", _speed_claim, TUTORIALS),
    ("4-bit (bitsandbytes NF4): ~8x smaller than FP32", "nf4", _size_claim(0.125, 0.03), ARITHMETIC),
    ("8-bit quantization barely changes quality (<1% perplexity)", "int8_dynamic", _quality_claim(1.01), TUTORIALS),
    ("8-bit quantization barely changes quality (<1% perplexity)", "bnb_int8", _quality_claim(1.01), LLM_INT8),
    ("8-bit quantization barely changes quality (<1% perplexity)", "int8_weight_only", _quality_claim(1.01),
     TUTORIALS),
    ("4-bit NF4 keeps quality (<5% perplexity)", "nf4", _quality_claim(1.05), QLORA),
    ("Pruning the 20% smallest weights makes the model smaller and faster", "pruned", _pruning_claim, PRUNING),
    ("Pruning 20% of weights barely changes quality (<5% perplexity)", "pruned", _quality_claim(1.05), PRUNING),
    ("ONNX export gives the same outputs", "onnx", _parity_claim, TUTORIALS),
    ("ONNX Runtime is faster than PyTorch", "onnx", _speed_claim, TUTORIALS),
    ("GGUF Q8_0 is ~3.8x smaller than FP32 (8.5 bits per weight)", "gguf", _size_claim(8.5 / 32, 0.03), LLAMA_CPP),
    ("llama.cpp is faster than PyTorch on CPU", "gguf", _speed_claim, TUTORIALS),
    ("bf16 halves the size", "bf16", _size_claim(0.5, 0.02), ARITHMETIC),
    ("bf16 is faster than fp32", "bf16", _speed_claim, TUTORIALS),
]
