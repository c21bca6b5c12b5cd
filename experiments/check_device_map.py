"""Check: a model loaded with ``device_map="auto"`` across GPUs runs under the engine.

Saves a random-weight Qwen2-style model, loads it split over every visible GPU (``max_memory`` forces the
split), runs a 2-worker combined-layout generation with each attention backend, and compares with the same
model on one GPU: worker tokens must match and every layer's KV blocks must live on that layer's device.

    python experiments/check_device_map.py --out experiments/results/device_map_check.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM
from hogwild_bench.tiny import tiny_tokenizer


def generate(model, tokenizer, attention: str, budget: int):
    lm = HogwildLM(model, attention=attention)
    caches = []
    original = lm.new_cache
    lm.new_cache = lambda *a, **k: caches.append(original(*a, **k)) or caches[-1]
    options = GenerationOptions(n_workers=2, layout="combined", budgets=[budget], collab_interval=16, early_stop=False)
    result = HogwildGenerator(lm, tokenizer, options, boundary=lambda s: len(s) >= 10).generate("What is 2^{10}?")
    return result.snapshots[budget], caches[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", type=int, default=48)
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    tokenizer = tiny_tokenizer()
    config = Qwen2Config(hidden_size=512, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=len(tokenizer), tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    report = {"gpus": gpus, "names": [torch.cuda.get_device_name(i) for i in range(gpus)], "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        random_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model_bytes = sum(p.numel() * p.element_size() for p in random_model.parameters())
        random_model.save_pretrained(tmp)
        single = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, device_map={"": 0}).eval()
        per_gpu = {i: int(model_bytes * 1.3 / gpus) for i in range(gpus)}  # too small for one GPU: forces a split
        split = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, device_map="auto",
                                                     max_memory=per_gpu).eval()  # fmt: skip
        layer_devices = {}
        for name, device in split.hf_device_map.items():
            if ".layers." in name:
                layer_devices[int(name.split(".layers.")[1].split(".")[0])] = (
                    f"cuda:{device}" if isinstance(device, int) else str(device)
                )
        report["hf_device_map"] = {k: str(v) for k, v in split.hf_device_map.items()}
        for attention in ("query_rotation", "triton"):
            reference, _ = generate(single, tokenizer, attention, args.budget)
            snap, cache = generate(split, tokenizer, attention, args.budget)
            placement_ok = all(
                str(cache.block("prompt").keys[layer].device) == device for layer, device in layer_devices.items()
            )
            run = {
                "attention": attention,
                "devices_used": sorted(set(layer_devices.values())),
                "blocks_on_layer_devices": placement_ok,
                "tokens_match_single_gpu": snap.worker_tokens == reference.worker_tokens,
                "answer": snap.answer,
            }
            report["runs"].append(run)
            print(json.dumps(run))
    report["ok"] = all(
        r["blocks_on_layer_devices"] and r["tokens_match_single_gpu"] and r["devices_used"] == [f"cuda:{i}" for i in
                                                                                                 range(gpus)]
        for r in report["runs"]
    )  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("ok" if report["ok"] else "FAILED", args.out)


if __name__ == "__main__":
    main()
