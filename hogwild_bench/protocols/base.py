"""What every protocol returns, and the registry that maps ``protocol=<name>`` to an implementation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from hogwild_bench.engine import HogwildLM, prompts
from hogwild_bench.engine.batch import BatchJob
from hogwild_bench.engine.generation import drive
from hogwild_bench.engine.prompts import PromptStyle


@dataclass(frozen=True)
class GridPoint:
    """One configuration inside a job: worker count and cache layout."""

    workers: int
    layout: str

    @property
    def label(self) -> str:
        return f"w{self.workers}-{self.layout}"


@dataclass
class BudgetOutcome:
    """A protocol's result at one tokens-per-worker budget (one stored record after scoring)."""

    budget: int
    tokens_per_worker: int
    total_tokens: int
    wall_seconds: float
    response: str
    finished_early: bool
    extra: dict = field(default_factory=dict)
    transcript: list | None = None  # per worker `collaboration.Piece`s: the runner derives the collaboration metrics
    sampled_tokens: int | None = None  # of total_tokens, those drawn from the model (None: all of them)


@dataclass
class ProtocolContext:
    """What a protocol is built from: the engine-wrapped model, its tokenizer and the run config."""

    lm: HogwildLM
    tokenizer: object
    cfg: object  # RunConfig

    @cached_property
    def prompt_style(self) -> PromptStyle:
        """``prompt.name``'s style, its team prompt read from ``prompt.system_file`` once per run."""
        prompt = self.cfg.prompt
        text = Path(prompt.system_file).read_text() if prompt.system_file else None
        return prompts.prompt_style(prompt.name, system_text=text)


class Protocol(ABC):
    """A way to solve a problem with the engine. ``job`` gives the generation as a coroutine (so the runner
    can batch it with others); a protocol that cannot be batched sets ``batchable = False`` and overrides
    ``generate``. ``outcomes`` turns a generation's result into one outcome per budget; it needs only the
    tokenizer and the config, so the runner can run it in a process of its own, off the decode loop."""

    name: str = "protocol"
    batchable: bool = True

    def __init__(self, ctx: ProtocolContext):
        self.ctx = ctx

    @abstractmethod
    def job(self, problem: str, point: GridPoint) -> BatchJob:
        """Solving ``problem`` once, as a job whose coroutine returns the generation's result."""

    @abstractmethod
    def outcomes(self, result) -> list[BudgetOutcome]:
        """One outcome per configured budget from a generation's result (``job`` or ``generate``)."""

    def generate(self, problem: str, point: GridPoint):
        """Solve ``problem`` once, alone: the generation's result."""
        job, cache = self.job(problem, point), self.ctx.lm.new_cache()
        return drive(job.start(cache), self.ctx.lm, cache)

    def run(self, problem: str, point: GridPoint) -> list[BudgetOutcome]:
        """Solve ``problem`` once, alone, and return one outcome per configured budget."""
        return self.outcomes(self.generate(problem, point))


PROTOCOLS: dict[str, Callable[[ProtocolContext], Protocol]] = {}


def register_protocol(name: str):
    def wrap(cls):
        cls.name = name
        PROTOCOLS[name] = cls
        return cls

    return wrap


def build_protocol(name: str, ctx: ProtocolContext) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid protocols: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name](ctx)
