"""Render the measured tables of `experiments/README.md` from the committed JSON results.

    python experiments/make_tables.py            # rewrites the generated sections of README.md in place

Every generated section sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers; the text
around them is written by hand. Nothing here measures anything: it only formats `results/*.json`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def decode_table(bench: dict) -> str:
    lines = [
        "| N | context | layout | unique KV tokens | (d) floor ms | (a) HF ms | (b) torch ms | (c) Triton eager ms "
        "| (c) + CUDA graph ms | (c) + graph + compile ms | compiled/floor | compiled/HF |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in bench["decode"]:
        lines.append(
            f"| {r['workers']} | {r['context']} | {r['layout']} | {r['unique_kv_tokens']} | {_f(r['floor_ms'])} "
            f"| {_f(r['hf_ms'], 1)} | {_f(r['torch_ms'], 1)} | {_f(r['triton_ms'], 1)} | {_f(r['graph_ms'])} "
            f"| {_f(r['compiled_ms'])} | {_f(r['compiled_over_floor'])} | {_f(r['compiled_over_hf'])} |"
        )
    return "\n".join(lines)


def e2e_table(bench: dict) -> str:
    lines = [
        "| N | attention | CUDA graphs | compiled | budget | total tokens | sampled tokens | wall s | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in bench["end_to_end"]:  # tokens/s: of sampled tokens since session 28, of all tokens before
        lines.append(
            f"| {r['workers']} | {r['attention']} | {r['cuda_graphs']} | {r.get('compiled', False)} | {r['budget']} "
            f"| {r['total_tokens']} | {r.get('sampled_tokens', '–')} | {r['wall_seconds']} | {r['tokens_per_second']} |"
        )
    return "\n".join(lines)


def targets(bench: dict) -> str:
    rows = bench["decode"]
    at = {(r["workers"], r["context"], r["layout"]): r for r in rows}
    out = []
    for method, label in (("compiled", "graph + compile"), ("graph", "graph")):
        ratios = [at[(n, 16384, lay)][f"{method}_over_floor"] for n in (2, 4) for lay in ("combined", "contiguous",
                                                                                           "interleaved")]  # fmt: skip
        met = sum(r <= 1.5 for r in ratios)
        detail = ", ".join(
            f"N={n} {lay} {at[(n, 16384, lay)][f'{method}_over_floor']:.2f}"
            for n in (2, 4)
            for lay in ("combined", "contiguous", "interleaved")
        )
        out.append(f"- (c) ≤ 1.5 × floor at N = 2 and 4, 16k ({label}): **{met} of 6 met** — {detail}.")
    over_hf = [r["compiled_over_hf"] for r in rows]
    slower = sum(v >= 1 for v in over_hf)
    out.append(
        f"- (c) faster than (a) at every point: **{'met' if not slower else f'missed at {slower} points'}** "
        f"(graph + compile: {min(over_hf):.2f}–{max(over_hf):.2f} × HF's step time; graph only: "
        f"{min(r['graph_over_hf'] for r in rows):.2f}–{max(r['graph_over_hf'] for r in rows):.2f} ×)."
    )
    for method, label in (("compiled", "graph + compile"), ("graph", "graph")):
        parts = []
        for lay in ("combined", "contiguous", "interleaved"):
            ratio = at[(4, 16384, lay)][f"{method}_ms"] / at[(1, 16384, lay)][f"{method}_ms"]
            parts.append(f"{lay} {ratio:.2f} ×" + ("" if ratio <= 1.15 else " (missed)"))
        out.append(f"- N = 4 step ≤ 1.15 × N = 1 step at 16k ({label}): " + ", ".join(parts) + ".")
    return "\n".join(out)


def profile_table(profile: dict) -> str:
    groups = ("gemm", "hogwild_attention", "hogwild_merge", "hogwild_append", "inductor_fused", "elementwise",
              "reduce", "other")  # fmt: skip
    lines = [
        "| N | layout | compiled | step ms | replay (device) ms | host ms | " + " | ".join(groups) + " | floor ms |",
        "|---|---|---|---|---|---|" + "---|" * len(groups) + "---|",
    ]
    for p in profile["points"]:
        g = p["kernel_groups_per_step"]
        cells = " | ".join(f"{g[k]['ms']:.2f} ({g[k]['kernels']:.0f})" if k in g else "–" for k in groups)
        lines.append(
            f"| {p['workers']} | {p['layout']} | {p['compiled']} | {p['step_ms']:.2f} | {p['replay_ms']:.2f} "
            f"| {p['host_ms']:.2f} | {cells} | {p['floor_ms']:.2f} |"
        )
    return "\n".join(lines)


def launches_table(launches: dict) -> str:
    lines = ["| layout | N | entries | attention launch µs | merge µs | total µs |", "|---|---|---|---|---|---|"]
    for p in launches["points"]:
        attention = sum(r["us"] for r in p["launches"] if "attention" in r["kernel"])
        merge = sum(r["us"] for r in p["launches"] if "merge" in r["kernel"])
        cells = (p["layout"], p["workers"], p["n_entries"], f"{attention:.1f}", f"{merge:.1f}", f"{p['total_us']:.1f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def real_sweep_table(summary: dict) -> str:
    """Accuracy per cell and budget with 95 % intervals; how generations ended at the largest budget."""
    budgets = [b["budget"] for b in summary["cells"][0]["by_budget"]]
    lines = [
        "| N | layout | "
        + " | ".join(f"{b} tokens" for b in budgets)
        + " | degenerate | ended by EOS | stopped on own answer | redundancy | tokens / worker |",
        "|---|---|" + "---|" * len(budgets) + "---|---|---|---|---|",
    ]
    for c in summary["cells"]:
        n = c["by_budget"][-1]["n"]
        accs = " | ".join(
            f"{b['accuracy']:.1%} [{b['ci_low']:.1%}, {b['ci_high']:.1%}]" for b in c["by_budget"]
        ).replace("%", " %")
        red = "–" if c["redundancy"] != c["redundancy"] else f"{c['redundancy']:.2f}"
        lines.append(
            f"| {c['workers']} | {c['layout']} | {accs} | {c['degenerate']} / {n} | {c['ended_by_eos']} "
            f"| {c['stopped_on_answer']} | {red} | {c['mean_tokens_per_worker']:.0f} |"
        )
    return "\n".join(lines)


def ablation_table(ablation: dict) -> str:
    """One row per format variant: accuracy at each budget (95 % interval at the largest) and how it ended."""
    budgets = ablation["budgets"].split(",")
    lines = [
        "| variant | settings | " + " | ".join(budgets[:-1]) + f" | {budgets[-1]} [95 % CI] | degenerate "
        "| ended by EOS | stopped on own answer | mean max compression | tokens / worker |",
        "|---|---|" + "---|" * len(budgets) + "---|---|---|---|---|",
    ]
    for r in ablation["rows"]:
        settings = " ".join(f"`{o}`" for o in r["overrides"] if not o.startswith("protocol=hogwild"))
        accs = [f"{r['by_budget'][b]['accuracy']:.0%}" for b in budgets[:-1]]
        low, high = r["ci95"]
        last = f"**{r['accuracy']:.0%}** [{low:.1%}, {high:.1%}]"
        ends = [f"{r['degenerate']} / {r['n']}", r["ended_by_eos"], r["stopped_on_answer"]]
        cells = [f"`{r['variant']}`", settings, *accs, last, *ends, _f(r["mean_max_compression"], 1),
                 f"{r['mean_tokens_per_worker']:.0f}"]  # fmt: skip
        lines.append(("| " + " | ".join(str(c) for c in cells) + " |").replace("%", " %"))
    return "\n".join(lines)


def batch_table(bench: dict) -> str:
    """The sweep benchmark's points: tokens/s, speedups and the roofline fraction (warm-ups are not timed
    points: they only say how long a compilation took)."""
    hf = {p["rows"]: p["tokens_per_second"] for p in bench["points"] if p["method"] == "hf_generate"}
    lines = [
        "| N | method | rows | mean rows / forward | generated tokens/s | ms per forward | x one at a time "
        "| x HF generate | roofline tokens/s | fraction of roofline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in bench["points"]:
        if p["method"] == "hf_generate" or "workers" not in p or p["method"].endswith("_warmup"):
            continue
        ms = 1e3 * p["wall_seconds"] / p["forwards"]
        vs_hf = p["tokens_per_second"] / hf[p["rows"]] if p["rows"] in hf else None
        roofline = [_f(p.get("roofline_tokens_per_second"), 0), _f(p.get("fraction_of_roofline"), 3)]
        cells = [p["workers"], p["method"], p["rows"], f"{p['mean_rows_per_forward']:.1f}",
                 f"{p['tokens_per_second']:.0f}", f"{ms:.0f}", _f(p.get("speedup_vs_one_at_a_time"), 1),
                 _f(vs_hf), *roofline]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for rows, tps in sorted(hf.items()):
        lines.append(
            f"| – | hf_generate (no Hogwild!, sampling) | {rows} | {rows} | {tps:.0f} | – | – | 1.00 | – | – |"
        )
    return "\n".join(lines)


def runs_merged(*names: str) -> dict:
    """The points of several runs of `batch_bench.py` as one table. Each point's speedup over one at a time is
    its own run's; HF `generate` is taken per row count from whichever run measured it (the README says where
    each run ran)."""
    return {"points": [p for name in names for p in json.loads((RESULTS / name).read_text())["points"]]}


def bench_meta(bench: dict) -> str:
    meta = bench["meta"]
    return (
        f"{meta['gpu']}, torch {meta['torch']}. Weights read per step: {meta['weight_bytes'] / 1e9:.2f} GB "
        f"(every parameter but the embedding table); KV per token {meta['kv_bytes_per_token']} bytes. Copy "
        f"bandwidth measured in the same run: {meta['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s (bytes read + "
        f"written), so the weights alone take {meta['weight_bytes'] / meta['bandwidth_bytes_per_s'] * 1e3:.2f} ms."
    )


def main() -> None:
    bench = json.loads((RESULTS / "bench_decode_h100.json").read_text())
    sections = {
        "bench-meta": bench_meta(bench),
        "decode-table": decode_table(bench),
        "e2e-table": e2e_table(bench),
        "targets": targets(bench),
        "profile-table": profile_table(json.loads((RESULTS / "profile_graph_h100.json").read_text())),
        "launches-table": launches_table(json.loads((RESULTS / "attention_launches_h100.json").read_text())),
        "gsm8k-small-table": real_sweep_table(
            json.loads((RESULTS / "real_model" / "gsm8k_small_h100.json").read_text())
        ),
        "format-ablation-table": ablation_table(
            json.loads((RESULTS / "real_model" / "format_ablation_h100_session7.json").read_text())
        ),
        "batch-bench-table": batch_table(json.loads((RESULTS / "batch_bench_h100_session7.json").read_text())),
        "batch-bench-session8-table": batch_table(json.loads((RESULTS / "batch_bench_h100_session8.json").read_text())),
        "batch-bench-session10-table": batch_table(
            json.loads((RESULTS / "batch_bench_h100_session10.json").read_text())
        ),
        "batch-bench-session13-table": batch_table(
            json.loads((RESULTS / "batch_bench_h100_session13.json").read_text())
        ),
        "batch-bench-session20-table": batch_table(
            runs_merged("batch_bench_h100_session20.json", "batch_bench_h100_session20_rows128.json")
        ),
        "batch-bench-session21-table": batch_table(
            runs_merged("session21/batch_bench_overlap.json", "session21/batch_bench_overlap_warm.json")
        ),
        "batch-bench-session22-table": batch_table(
            json.loads((RESULTS / "session22/batch_bench_inserts.json").read_text())
        ),
        "batch-bench-session22-15b-table": batch_table(
            json.loads((RESULTS / "session22/batch_bench_15b_lanes2.json").read_text())
        ),
        "batch-bench-session18-table": batch_table(
            runs_merged(
                "batch_bench_h100_session18_rows16_32.json",
                "batch_bench_h100_session18_n2.json",
                "batch_bench_h100_session18_n4.json",
            )
        ),
    }
    readme = HERE / "README.md"
    text = readme.read_text()
    for name, body in sections.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- {name}:start/end --> markers")
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    readme.write_text(text)


if __name__ == "__main__":
    main()
