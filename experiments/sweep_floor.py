"""The memory floor of a finished sweep: how fast could one GPU have run the generations its records describe?

Issue 13 asks for the real GSM8K sweep (1.5B, 1,319 problems x 9 cells, budgets to 2,048) in 20 minutes on one
H100. Whether that is reachable at all is a question about bytes, answered here from the records: every decode
step of a generation reads the generation's unique K/V once (the attention kernel reads a block once for all the
rows that see it), and every forward reads the weights once, shared by the rows it carries. So

    floor = (forwards x weight bytes + sum over generations and steps of the visible K/V bytes) / bandwidth

with forwards = all rows' steps / rows per forward (a table over rows per forward: more rows need more KV memory).
A generation's steps and tokens come from its largest-budget record (``tokens_per_worker`` steps; ``total_tokens``
cached by its end, step prefixes included), its visible tokens grow linearly from the prompt to the prompt plus
those. Prompt lengths are counted with ``--tokenizer`` (a GGUF or HF directory: the real model's tokenizer, or a
stand-in of a similar vocabulary, said so in the output) on the prompt the run rendered (`PromptFormat`, the run's
``settings.json``); without it, at ``--chars-per-token``. Left out, so the floor is lower than any real run: finisher
forwards, prefill compute, the sampler and the host.

    mkdir -p /tmp/sweep && tar -xJf experiments/results/real_model/full_sweep_records.tar.xz -C /tmp/sweep
    python experiments/sweep_floor.py /tmp/sweep/gsm8k_small-qwen25_coder_15b_instruct-gsm8k-s0 \\
        --shape 1.5b --bandwidth 2.96e12 --out experiments/results/session25/sweep_floor_15b_h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, Qwen2Config  # noqa: E402

from hogwild_bench.bench import SHAPES, weight_bytes_read  # noqa: E402
from hogwild_bench.engine.model import kv_bytes_per_token  # noqa: E402
from hogwild_bench.store import iter_records  # noqa: E402

GENERATION_KEY = ("problem_id", "protocol", "workers", "layout", "seed", "temperature")


def settings_of(run_dir: Path) -> dict | None:
    found = sorted(run_dir.rglob("settings.json"))
    return json.loads(found[0].read_text()) if found else None


def generations(run_dir: Path) -> dict[tuple, dict]:
    """Each generation's largest-budget record (the state it ended in), keyed by `GENERATION_KEY`."""
    last: dict[tuple, dict] = {}
    for record in iter_records(sorted(run_dir.rglob("records*.jsonl"))):
        if record.get("status") != "ok":
            continue
        key = tuple(record[k] for k in GENERATION_KEY)
        if key not in last or record["budget"] > last[key]["budget"]:
            keep = ("problem", "workers", "layout", "budget", "tokens_per_worker", "total_tokens")
            last[key] = {k: record[k] for k in keep}
    return last


def prompt_counter(tokenizer_path: str | None, settings: dict | None, chars_per_token: float):
    """problem, workers, layout -> prompt tokens; and a line saying how they were counted."""
    if tokenizer_path is None:
        return (lambda problem, workers, layout: round(len(problem) / chars_per_token)), (
            f"problem text only (no system prompt), {chars_per_token} characters per token: no tokenizer given"
        )
    from transformers import AutoTokenizer

    from hogwild_bench.engine.prompts import PromptFormat, prompt_style

    path = Path(tokenizer_path)
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    generation = (settings or {}).get("generation", {})
    prompt = (settings or {}).get("prompt", {})
    style = prompt_style(prompt.get("name", "paper")) if isinstance(prompt, dict) else prompt_style("paper")
    formats: dict[tuple, PromptFormat] = {}

    def count(problem: str, workers: int, layout: str) -> int:
        key = (workers, layout)
        if key not in formats:
            formats[key] = PromptFormat(
                tokenizer, workers, layout=layout, step_labels=generation.get("step_labels", True),
                greeting=generation.get("greeting", True), style=style,
            )  # fmt: skip
        fmt = formats[key]
        text = fmt.prompt_text(problem, has_history=layout != "contiguous")
        text += "".join(fmt.first_step(i) for i in range(workers))
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count, f"rendered prompts counted with {path.name} (a stand-in unless it is the run's model)"


def shape_model(shape: dict) -> torch.nn.Module:
    """The bf16 model of ``shape`` on the meta device: its sizes without its memory."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(Qwen2Config(**shape), dtype=torch.bfloat16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run's store directory (records*.jsonl, settings.json)")
    parser.add_argument("--shape", default="1.5b", choices=sorted(SHAPES))
    parser.add_argument("--bandwidth", type=float, default=2.96e12, help="bytes/s (H100: copy bandwidth measured)")
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 128, 256, 512], help="rows per forward")
    parser.add_argument("--tokenizer", help="GGUF file or HF directory to count prompt tokens with")
    parser.add_argument("--chars-per-token", type=float, default=4.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model = shape_model(SHAPES[args.shape])
    per_token, weights = kv_bytes_per_token(model), weight_bytes_read(model)
    count, counted = prompt_counter(args.tokenizer, settings_of(args.run_dir), args.chars_per_token)
    found = generations(args.run_dir)
    if not found:
        raise SystemExit(f"no ok records under {args.run_dir} (records*.jsonl of a run's store directory)")
    row_steps = kv_read = prompt_tokens = 0
    for gen in found.values():
        steps, written = gen["tokens_per_worker"], gen["total_tokens"]
        prompt = count(gen["problem"], gen["workers"], gen["layout"])
        prompt_tokens += prompt
        row_steps += gen["workers"] * steps
        kv_read += per_token * (steps * prompt + written * (steps + 1) / 2)  # visible tokens grow linearly
    kv_seconds = kv_read / args.bandwidth
    table = []
    for rows in args.rows:
        forwards = row_steps / rows
        seconds = forwards * weights / args.bandwidth + kv_seconds
        table.append({"rows_per_forward": rows, "forwards": round(forwards), "weight_seconds":
                      round(forwards * weights / args.bandwidth, 1), "floor_seconds": round(seconds, 1),
                      "floor_minutes": round(seconds / 60, 2)})  # fmt: skip
    result = {
        "command": " ".join(["experiments/sweep_floor.py", *sys.argv[1:]]),
        "generations": len(found),
        "row_steps": row_steps,
        "prompt_tokens": {
            "total": prompt_tokens,
            "mean": round(prompt_tokens / max(len(found), 1), 1),
            "counted": counted,
        },  # fmt: skip
        "shape": args.shape,
        "weight_bytes_per_forward": weights,
        "kv_bytes_per_token": per_token,
        "bandwidth_bytes_per_s": args.bandwidth,
        "kv_read_bytes": kv_read,
        "kv_seconds": round(kv_seconds, 1),
        "by_rows_per_forward": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
