"""A/B of the single-generation decode loop (`hogwild_bench.bench.end_to_end`: random 7B, 2 and 4 workers, 256
tokens each, compiled model, CUDA graphs): `DecodeGraph` as at 77b5196 against the current one, in one process.

The old class is read from git (``git show 77b5196:hogwild_bench/engine/graphs.py``) into ``old_graphs.py``
beside this script when that file is missing (the device call carried it, written beforehand). Run from the
repository root: ``python experiments/results/session19/e2e_ab/e2e_ab.py old newcompiled``."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

import hogwild_bench.engine.graphs as graphs_module
from hogwild_bench.bench import build_model, end_to_end
from hogwild_bench.engine import HogwildLM
from hogwild_bench.tiny import tiny_tokenizer

OLD = Path(__file__).with_name("old_graphs.py")


def old_decode_graph():
    if not OLD.exists():
        OLD.write_text(subprocess.check_output(["git", "show", "77b5196:hogwild_bench/engine/graphs.py"], text=True))
    spec = importlib.util.spec_from_file_location("old_graphs", OLD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DecodeGraph


def main() -> None:
    classes = {"old": old_decode_graph(), "newcompiled": graphs_module.DecodeGraph}
    model, tokenizer = build_model(), tiny_tokenizer()
    for variant in sys.argv[1:]:
        graphs_module.DecodeGraph = classes[variant]  # HogwildLM.forward looks it up here on every new view set
        lm = HogwildLM(model, cuda_graphs=True, compile=True)
        for n in (2, 4, 2):  # the first runs of a variant include compilation and capture
            counters = torch._dynamo.utils.counters
            counters.clear()
            result = end_to_end(lm, tokenizer, "triton", n, 256)
            stats = {k: dict(v) for k, v in counters.items() if k in ("stats", "frames")}
            print(json.dumps({"variant": variant, **result, "recompiles": dict(counters.get("recompiles", {})),
                              "stats": stats}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
