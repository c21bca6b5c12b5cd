"""Model and tokenizer loading from a `ModelConfig`: the hub (or a local path), registry-packaged GGUF
weights (fetched and converted once, see `hogwild_bench.models`), or a tiny random model."""

from __future__ import annotations

import torch

from hogwild_bench.config import DType, ModelConfig
from hogwild_bench.engine import check_model_supported

DTYPES = {DType.float32: torch.float32, DType.bfloat16: torch.bfloat16, DType.float16: torch.float16}


class ModelLoadError(RuntimeError):
    """The model or tokenizer could not be loaded; the message says which and why."""


def load_model(cfg: ModelConfig):
    """``(model, tokenizer)``; the model's architecture is checked before any weight is read."""
    if cfg.tiny_family is not None:
        from hogwild_bench.tiny import tiny_model, tiny_tokenizer

        dtype = DTYPES.get(cfg.dtype, torch.float32)
        return tiny_model(cfg.tiny_family, dtype=dtype), tiny_tokenizer(cfg.chat_style)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = cfg.hf_id if cfg.registry is None else str(_registry_model_dir(cfg))
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"model {cfg.name!r}: could not load the config of {where!r}: {error}. model.hf_id must be a hub id "
            "or a local directory; offline machines need HF_HUB_OFFLINE=1 with a pre-downloaded copy in HF_HOME"
        ) from error
    check_model_supported(config)
    dtype = "auto" if cfg.dtype == DType.auto else DTYPES[cfg.dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, device_map=cfg.device_map, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"model {cfg.name!r}: could not load {where!r}: {error}") from error
    return model.eval(), tokenizer


def _registry_model_dir(cfg: ModelConfig):
    """The converted directory of a registry model, fetched and converted on first use."""
    from hogwild_bench.models import fetch
    from hogwild_bench.registry import RegistryError

    try:
        return fetch(cfg)
    except RegistryError as error:
        raise ModelLoadError(
            f"model {cfg.name!r}: {error}. Fetch it by hand with: python -m hogwild_bench.models fetch {cfg.name}"
        ) from error
