import os
import sys
from pathlib import Path

if os.environ.get("CUDA_VISIBLE_DEVICES", "") == "" and not Path("/dev/nvidiactl").exists():
    # no GPU: Triton kernels run in its interpreter (tiny shapes). Set before triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from hogwild_bench.tiny import tiny_model, tiny_tokenizer  # noqa: E402

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
LAYOUTS = ("contiguous", "interleaved", "combined")

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer("qwen")


@pytest.fixture(scope="session")
def models():
    cache = {}

    def get(family: str, **overrides):
        key = (family, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = tiny_model(family, **overrides)
        return cache[key]

    return get


ROOT = Path(__file__).resolve().parent.parent


def compose_config(overrides: list[str], hydra_config: bool = False):
    """Compose ``conf/`` exactly as ``python -m hogwild_bench`` does, in-process."""
    from hydra import compose, initialize_config_dir

    from hogwild_bench.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "hogwild_bench" / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_config)


def tiny_run_overrides(root, *extra: str) -> list[str]:
    """A fast tiny-model run on the shipped sample (a few problems, short budgets)."""
    return [
        "model=tiny_random_llama",
        "dataset=sample",
        "dataset.limit=3",
        "generation.budgets=[6,12]",
        "generation.finisher_max_tokens=4",
        f"store.root={root}",
        "progress=false",
        "plot=false",
        *extra,
    ]
