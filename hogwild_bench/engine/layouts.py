"""Cache layouts as data: which blocks each worker sees, in which order.

Block names are shared by all layouts: ``prompt``, ``history`` (finished steps, in completion order),
``step{i}`` (worker i's current step -- in `contiguous`, everything worker i wrote) and the constant text
blocks a layout declares in `Layout.constants` (prefilled once, before generation). A generation may open
every view with ``template`` (`TEMPLATE`): the prompt's tokens before the problem, which every generation of
a sweep shares (`HogwildGenerator` writes the prompt as ``template`` + ``prompt``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TEMPLATE = "template"
PROMPT = "prompt"
HISTORY = "history"


def step_block(worker: int) -> str:
    return f"step{worker}"


@dataclass(frozen=True)
class Layout:
    """Base: ``view(i, n)`` is worker i's block order; its own block is always last."""

    name: str = "layout"
    has_history: bool = True

    def view(self, worker: int, n_workers: int) -> list[str]:
        raise NotImplementedError

    def views(self, n_workers: int) -> list[list[str]]:
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        return [self.view(i, n_workers) for i in range(n_workers)]

    def finisher_view(self, n_workers: int) -> list[str]:
        """What the answer finisher reads: everything written so far, worker 0's step last."""
        return self.view(0, n_workers)

    @property
    def constants(self) -> dict[str, str]:
        """Constant text blocks (name -> text) this layout places between worker blocks."""
        return {}


@dataclass(frozen=True)
class Contiguous(Layout):
    """view_i = [prompt, every other worker's block (fixed order), own block]; no history.

    A token is visible to the others as soon as it is written."""

    name: str = "contiguous"
    has_history: bool = False

    def view(self, worker: int, n_workers: int) -> list[str]:
        others = [step_block(j) for j in range(n_workers) if j != worker]
        return [PROMPT, *others, step_block(worker)]


@dataclass(frozen=True)
class Interleaved(Layout):
    """view_i = [prompt, history of finished steps, own current step]; others' unfinished steps are hidden."""

    name: str = "interleaved"

    def view(self, worker: int, n_workers: int) -> list[str]:
        return [PROMPT, HISTORY, step_block(worker)]

    def finisher_view(self, n_workers: int) -> list[str]:
        others = [step_block(j) for j in range(1, n_workers)]
        return [PROMPT, HISTORY, *others, step_block(0)]


@dataclass(frozen=True)
class Combined(Layout):
    """The official repo's layout: history, then every worker's step in progress.

    view_i = [prompt, history, others_header, (step_j, separator) for j != i, own_header, step_i].
    """

    name: str = "combined"
    others_header: str = "\n\n### Work in progress (others)\n\n"
    separator: str = " <...>\n\n"
    own_header: str = "### Work in progress (own)\n\n"
    _constants: tuple[str, ...] = field(default=("others_header", "separator", "own_header"), repr=False)

    def view(self, worker: int, n_workers: int) -> list[str]:
        others = []
        for j in range(n_workers):
            if j != worker:
                others += [step_block(j), "separator"]
        return [PROMPT, HISTORY, "others_header", *others, "own_header", step_block(worker)]

    @property
    def constants(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in self._constants}


@dataclass(frozen=True)
class Isolated(Layout):
    """view_i = [prompt, own block]: workers share only the prompt (the independent-sampling baseline).

    Not one of the sweepable cache layouts; the ``independent`` protocol uses it."""

    name: str = "isolated"
    has_history: bool = False

    def view(self, worker: int, n_workers: int) -> list[str]:
        return [PROMPT, step_block(worker)]


LAYOUTS: dict[str, type[Layout]] = {"contiguous": Contiguous, "interleaved": Interleaved, "combined": Combined}


def get_layout(name: str | Layout, **options) -> Layout:
    """A layout by name (``contiguous``, ``interleaved``, ``combined``) or an existing `Layout`."""
    if isinstance(name, Layout):
        return name
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; valid layouts: {', '.join(LAYOUTS)}")
    return LAYOUTS[name](**options)
