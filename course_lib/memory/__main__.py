"""``python -m course_lib.memory estimate|measure ...``: one plan or one measurement, printed as JSON.

``measure`` trains for a few steps in this process; ``measure.measure_peak`` starts this command
in a fresh process per measurement.
"""

from __future__ import annotations

import argparse
import json
import sys

from course_lib import memory
from course_lib.memory.measure import measure_here
from course_lib.memory.plan import METHODS, estimate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.memory", description=memory.__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("estimate", "measure"):
        p = sub.add_parser(command, help=f"{command} the peak memory of training; prints JSON")
        p.add_argument("--model", default="smollm2-135m")
        p.add_argument("--method", default="lora", choices=METHODS)
        p.add_argument("--seq-len", type=int, default=256)
        p.add_argument("--batch-size", type=int, default=4)
        p.add_argument("--gradient-checkpointing", action="store_true")
        p.add_argument("--device", default="auto" if command == "measure" else "cpu")
        if command == "measure":
            p.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "estimate":
        est = estimate(args.model, args.method, args.seq_len, args.batch_size, args.gradient_checkpointing,
                       device=args.device)
        print(json.dumps(est.as_dict(), indent=2))
        return 0
    result = measure_here(args.model, args.method, args.seq_len, args.batch_size, args.steps,
                          args.gradient_checkpointing, args.device)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
