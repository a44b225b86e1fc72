"""The quantize stage's command line: ``fetch-converter`` (an install step: make install, bundle.py,
binder) and ``table`` (merge the trained adapter and print the variant table in a terminal).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course_lib import paths, quantize, train
from course_lib.quantize.bench import Bench
from course_lib.quantize.measure import eval_data, merge
from course_lib.quantize.variants import DEFAULT_VARIANTS, GGUF_TYPES, converter_dir, fetch_converter
from course_lib.report import quiet_libraries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.quantize", description=quantize.__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch-converter", help="put llama.cpp's GGUF converter in the course cache (install step)")
    fetch.add_argument("--dest", default=None, help=f"default: {converter_dir()}")
    fetch.add_argument("--sdist", default=None, help="a llama-cpp-python .tar.gz already downloaded")
    fetch.add_argument("--version", default=None, help="llama-cpp-python version (default: the installed one)")
    fetch.add_argument("--if-missing", action="store_true", help="do nothing when the converter is already there")
    table = sub.add_parser("table", help="merge the trained adapter and print the variant table")
    table.add_argument("--run-dir", default=None)
    table.add_argument("--model", default="smollm2-135m")
    table.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    table.add_argument("--sparsity", type=float, default=0.2)
    table.add_argument("--gguf-type", default="q8_0", choices=GGUF_TYPES)
    args = parser.parse_args(argv)
    if args.command == "fetch-converter":
        dest = Path(args.dest) if args.dest else converter_dir()
        if args.if_missing and (dest / "convert_hf_to_gguf.py").exists():
            print(f"converter already in {dest}")
            return 0
        print(f"llama.cpp converter in {fetch_converter(dest, args.sdist, args.version)}")
        return 0
    from transformers import AutoTokenizer

    quiet_libraries()
    run_dir = paths.run_dir(args.run_dir)
    adapter = train.ensure_adapter(run_dir, args.model)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    data = eval_data(tokenizer, run_dir)
    merged = merge(adapter, run_dir / "quantize" / "merged", data)
    print(merged)
    bench = Bench(merged.folder, tokenizer, data, run_dir / "quantize", args.sparsity, args.gguf_type)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(bench.run_many(args.variants).drop(columns=["notes"]))
        print(bench.claims())
    return 0


if __name__ == "__main__":
    sys.exit(main())
