"""What a stored record depends on, as short hashes: the settings, the prompt texts, the code.

A record's key holds `settings_hash` (every config value that changes what is generated or how it is
scored, the prompt texts included) and its problem's content hash, so a changed setting, prompt or problem
can never reuse an old record. Budgets, `dataset.limit`, the grid and speed-only model settings (device
map, CUDA graphs, compile, attention backend: the same results up to rounding) are left out: changing them
extends or re-slices a run instead of starting a new one.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from omegaconf import OmegaConf

SPEED_ONLY_MODEL_KEYS = ("device_map", "cuda_graphs", "compile", "attention")
NOT_RESULT_KEYS = {"dataset": ("limit",), "generation": ("budgets",), "protocol": ("workers",)}


def short_hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prompt_texts() -> dict:
    """Every text the framework puts into a model's context or reads answers with."""
    from hogwild_bench import answers, tasks
    from hogwild_bench.engine import layouts, prompts, thinker_writer

    texts = {
        "system": [prompts.SOLO_SYSTEM_PROMPT, prompts.TEAM_SYSTEM_PROMPT],
        "layout_notes": prompts.LAYOUT_NOTES,
        "steps_notes": {str(labels): note for labels, note in prompts.STEPS_NOTES.items()},
        "styles": {
            name: [style.team_system, style.system_as_user, style.lead_opener, style.layout_notes]
            for name, style in prompts.PROMPT_STYLES.items()
        },  # fmt: skip
        "history_header": prompts.HISTORY_HEADER,
        "collab": prompts.COLLAB_PROMPT,
        "names": list(prompts.WORKER_NAMES),
        "combined": layouts.Combined().constants,
        "finisher": answers.BOXED_FINISHER.suffix,
        "group": tasks.GROUP_INSTRUCTION,
    }
    texts["thinker_writer"] = {k: v for k, v in vars(thinker_writer).items() if k.isupper() and isinstance(v, str)}
    return texts


@cache
def prompt_version() -> str:
    return short_hash(prompt_texts())


@cache
def source_hash() -> str:
    """A hash of the package's own source files (paths and contents): names the code exactly where git cannot,
    as in an installed copy or a copied working tree whose ``.git`` is stale (the GPU machine's copy of a
    checkout reports the commit the session started from, plus ``-dirty``)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in {".py", ".yaml"} and "__pycache__" not in path.parts:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


@cache
def code_version() -> str:
    """The package version, plus the git commit (and ``+dirty``) when run from a checkout, then
    ``.src<hash>`` of the package's source files (`source_hash`)."""
    try:
        package = version("hogwild_bench")
    except PackageNotFoundError:
        package = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    git = f"+{commit}{'-dirty' if dirty else ''}" if commit else ""
    return f"{package}{git}.src{source_hash()}"


def result_settings(cfg) -> dict:
    """The config values a record depends on (see the module docstring), plus the prompt version."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    model = {k: v for k, v in container["model"].items() if k not in SPEED_ONLY_MODEL_KEYS}
    settings = {"model": model, "scoring": container["scoring"]}
    for part, dropped in NOT_RESULT_KEYS.items():
        settings[part] = {k: v for k, v in container[part].items() if k not in dropped}
    prompt = container["prompt"]
    if prompt["system_file"]:  # the file's text, not its path, is what shapes a record
        prompt["system_file"] = short_hash(Path(prompt["system_file"]).read_text())
    settings["prompt"] = prompt
    settings["prompt_version"] = prompt_version()
    return settings


def settings_hash(cfg) -> str:
    return short_hash(result_settings(cfg))


def differing_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (leaves only)."""
    keys = []
    for key in sorted(set(old) | set(new), key=str):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differing_keys(a, b, name + ".")
        elif a != b:
            keys.append(f"{name}: stored {a!r}, now {b!r}")
    return keys
