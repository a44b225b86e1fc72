"""The quantize stage: merge the trained adapter, then make the model smaller (and maybe faster),
and measure every variant the same way.

    data = quantize.eval_data(tokenizer, run_dir)          # the same inputs for every variant
    merged = quantize.merge(adapter_dir, run_dir / "quantize" / "merged", data)  # adapter folded in
    bench = quantize.Bench(merged.folder, tokenizer, data, run_dir / "quantize")
    bench.run("nf4"); bench.table(); bench.claims()

Variants (``VARIANTS``): the fp32 model you start from (the baseline), bf16, PyTorch dynamic INT8,
bitsandbytes LLM.int8 and NF4 (double quantization), magnitude pruning, an ONNX export run by ONNX
Runtime, and a GGUF file run by llama.cpp. Each one is measured on the same things: size on disk,
weight memory, perplexity on the validation answers, persona score, decoding speed (ms/token), and
how far its logits move from the baseline's.

GGUF needs llama.cpp's converter, which ships only in the llama-cpp-python *source* package: fetch
it once at install time (``python -m course_lib.quantize fetch-converter``); nothing downloads
while a notebook runs.

Files: ``measure.py`` the merge, the shared inputs, perplexity, speed and bytes per parameter;
``variants.py`` one builder per variant, the registry ``build`` looks up, the ONNX export and
llama.cpp's converter; ``bench.py`` measuring a variant, the ``Bench`` table, its claims and panel;
``__main__.py`` the command line.
"""

from course_lib.quantize.bench import CLAIMS, Bench, Result, bits_per_weight, bytes_table, measure, panel, source_note
from course_lib.quantize.measure import (
    EvalData,
    MergeResult,
    activation_outliers,
    eval_data,
    load_unmerged,
    merge,
    ms_per_token,
    nll,
    parameter_split,
    perplexity_of_runner,
    predict_bytes,
    weight_bytes,
    weight_files_bytes,
)
from course_lib.quantize.variants import (
    DEFAULT_VARIANTS,
    GGUF_TYPES,
    VARIANTS,
    Built,
    build,
    convert_gguf,
    converter_available,
    converter_dir,
    export_onnx,
    fetch_converter,
    gguf_contents,
    measure_size,
    prune_magnitude,
)
from course_lib.runtimes import llama_cpp_available

__all__ = [
    "CLAIMS", "DEFAULT_VARIANTS", "GGUF_TYPES", "VARIANTS", "Bench", "Built", "EvalData", "MergeResult", "Result",
    "activation_outliers", "bits_per_weight", "build", "bytes_table", "convert_gguf",
    "converter_available", "converter_dir", "eval_data", "export_onnx", "fetch_converter", "gguf_contents",
    "llama_cpp_available", "load_unmerged", "measure", "measure_size", "merge", "ms_per_token", "nll", "panel",
    "parameter_split", "perplexity_of_runner", "predict_bytes", "prune_magnitude", "source_note", "weight_bytes",
    "weight_files_bytes",
]
