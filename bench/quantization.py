"""Figure 4: size, perplexity and decode-speed ratios of the quantize stage's variants to fp32.

``course_lib.quantize.Bench`` (notebook 04's own measurement) on the base model, int8 both ways: dynamic
(torch.ao, activations quantized per batch: the outlier lesson) and weight-only (torchao, what people
use for LLMs): perplexity over
the answer tokens of the same validation examples, size on disk, and ms/token timed in turns with
the fp32 baseline.
"""

from __future__ import annotations

from pathlib import Path


def variants(model_name: str, run_dir, names=("fp32", "int8_dynamic", "int8_weight_only", "nf4", "bnb_int8"),
             examples: int = 16, latency_tokens: int = 16) -> dict:
    from course_lib import models, quantize

    tokenizer = models.load_tokenizer(model_name)
    data = quantize.eval_data(tokenizer, run_dir, ppl_examples=examples, persona_questions=0,
                              latency_tokens=latency_tokens)
    bench = quantize.Bench(models.model_location(model_name)[0], tokenizer, data, Path(run_dir) / "bench" / "quantize")
    try:
        for name in names:
            bench.run(name)
        out = {"fp32_ppl": bench.results["fp32"].ppl, "fp32_size_mb": bench.results["fp32"].size_mb}
        for name in names[1:]:
            short = "int8" if name == "int8_dynamic" else name
            out[f"{short}_size_ratio"] = bench.ratio(name, "size_mb")
            out[f"{short}_ppl_ratio"] = bench.ratio(name, "ppl")
            out[f"{short}_ms_per_token_ratio"] = bench.ratio(name, "ms_per_token")
        if "int8_dynamic" in names:
            # Notebook 04's remedy for dynamic int8's activation outliers: keep down_proj in fp32.
            bench.run("int8_dynamic", int8_skip=("down_proj",))
            for what in ("size_mb", "ppl", "ms_per_token"):
                out[f"int8_keep_down_{what.replace('_mb', '')}_ratio"] = bench.ratio("int8_dynamic", what)
        return out
    finally:
        bench.close()
