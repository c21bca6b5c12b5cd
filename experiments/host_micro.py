"""Per-call host cost of three small things the batch loop does on every step, kept or recomputed: a step
header's encode (`engine.pieces.encode_short`), a generation's view names (`CacheNamespace.qualify`) and a
commit's RoPE-shift cos/sin (`RotaryShift.cos_sin` of an int). py-spy of the real sweep (session 17) put them
at 4.3 % (`PromptFormat.encode`, prompts included), 2.3 % and 3.1 % of the loop's thread; this says what each
call costs with and without the memo, on this machine's CPU (``--device cuda`` for the cos/sin launches on a GPU).
Session 18: the same for a stream of commit lengths (synthetic: uniform in 0..8191, a history up to 4 x 2,048
tokens), where session 17's memo (a dict of up to 4,096 deltas, cleared when full) mostly missed, against the
table of every delta that replaced it.

    python experiments/host_micro.py --out experiments/results/host_micro_cpu.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import timeit
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hogwild_bench.engine.batch import CacheNamespace  # noqa: E402
from hogwild_bench.engine.model import Write  # noqa: E402
from hogwild_bench.engine.pieces import encode_short  # noqa: E402
from hogwild_bench.engine.prompts import PromptFormat  # noqa: E402
from hogwild_bench.engine.rope import RotaryShift  # noqa: E402
from hogwild_bench.tiny import tiny_tokenizer  # noqa: E402


def per_call_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    tokenizer = tiny_tokenizer("qwen")
    header = PromptFormat(tokenizer, 4, layout="interleaved").step_prefix(2, 17)
    names = ["history", *(f"w{i}/step" for i in range(4)), "header", "sep", "w2/own"]
    writes = [Write(names, [1]) for _ in range(4)]
    namespace = CacheNamespace(None, "g123/", None)  # qualify reads only the prefix
    rope = RotaryShift(1.0 / (1e6 ** (torch.arange(0, 128, 2).float() / 128)))
    device = torch.device(args.device)

    def fresh_cos_sin():  # what cos_sin of an int did before it kept its results
        out = rope._cos_sin(rope._freqs(device) * 1234.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    def kept_cos_sin():
        out = rope.cos_sin(1234, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    rng = random.Random(0)
    lengths = [rng.randrange(8192) for _ in range(20000)]
    kept17: dict[int, tuple] = {}

    def session17_cos_sin(delta: int):  # session 17's memo: up to 4,096 deltas, then cleared
        pair = kept17.get(delta)
        if pair is None:
            if len(kept17) >= 4096:
                kept17.clear()
            pair = kept17[delta] = rope._cos_sin(rope._freqs(device) * float(delta))
        return pair

    def stream(cos_sin):
        def run():
            out = [cos_sin(d) for d in lengths]
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        return lambda: min(timeit.repeat(run, number=1, repeat=3)) / len(lengths) * 1e6

    result = {
        "command": " ".join(["experiments/host_micro.py", *sys.argv[1:]]),
        "torch": torch.__version__,
        "us_per_call": {
            "header_encode_tokenizer": per_call_us(lambda: tokenizer.encode(header, add_special_tokens=False), 2000),
            "header_encode_short": per_call_us(lambda: encode_short(tokenizer, header), 2000),
            "qualify_4_rows_concatenated": per_call_us(
                lambda: [Write([namespace.prefix + n for n in w.view], w.tokens) for w in writes], 20000
            ),
            "qualify_4_rows_kept": per_call_us(lambda: namespace.qualify(writes), 20000),
            f"cos_sin_int_fresh_{device.type}": per_call_us(fresh_cos_sin, 2000),
            f"cos_sin_int_kept_{device.type}": per_call_us(kept_cos_sin, 2000),
            f"cos_sin_length_stream_session17_memo_{device.type}": stream(session17_cos_sin)(),
            f"cos_sin_length_stream_table_{device.type}": stream(lambda d: rope.cos_sin(d, device))(),
        },
    }
    result["us_per_call"] = {k: round(v, 2) for k, v in result["us_per_call"].items()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
