"""Thinker/Writer: two streams of one model over a shared cache, switched by yes/no gates.

Writer view  = [writer prompt,  thinker stream, writer split,  writer stream]
Thinker view = [thinker prompt, writer stream,  thinker split, thinker stream]

Generation starts thinker-only. At the end of a thinker paragraph a gate asks the thinker whether it has
thought enough to resume writing (answer read by comparing p(" yes") and p(" no")); on yes both streams
decode together. At the end of a writer paragraph the writer asks whether it should wait for thoughts; on
yes it pauses. Gate questions and answers go into the cache of the stream that asked.

Unlike the reference notebook (which tests "the last token ends in a newline" and so re-fires right after
its own "no\\n\\n" answer), a gate fires only on a *completed paragraph with new content since the last
gate*, and only after ``gate_min_tokens`` new tokens (`ParagraphGate`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hogwild_bench.engine.generation import Finisher, StopRule, run_finisher
from hogwild_bench.engine.model import HogwildLM, Write
from hogwild_bench.engine.sampling import Sampler, SamplingParams

THINKER_GATE = "[CONTROL] Have I thought enough to resume writing a response? (yes/no):"
WRITER_GATE = "\n\n[CONTROL] Should I wait for thoughts before continuing writing? (yes/no):"

THINKER_SYSTEM = (
    "You are the Thinker. Nobody but you reads what you write here. Above your notes you can see the Writer's "
    "answer to the user as it is being written. Reason about the problem freely: explore, compute, check, "
    "and point out anything in the Writer's answer that is wrong or missing, so the next part of it is right."
)
WRITER_SYSTEM = (
    "You are the Writer. Above your answer you can see your own private thoughts as they unfold. Turn what "
    "they establish into a clear, correct answer for the user; do not solve beyond them, and follow them when "
    "they change. End with the final answer inside \\boxed{}."
)
THINKER_OPENING = "Thinking it through.\n\n"
WRITER_OPENING = "Answer.\n\n"
THINKER_SPLIT = "\n\n(The Writer's answer continues above; my thoughts continue here.)\n\n"
WRITER_SPLIT = "\n\n(My thoughts continue above; the answer continues here.)\n\n"

VIEWS = {
    "writer": ["writer_prompt", "thinker", "writer_split", "writer"],
    "thinker": ["thinker_prompt", "writer", "thinker_split", "thinker"],
}


class ParagraphGate:
    """Fires when the tokens since the last gate end a paragraph ("\\n\\n"), contain text, and number at least
    ``min_tokens``. The caller resets its since-last-gate list when the gate fires, so a gate cannot fire
    again until new tokens have been written."""

    def __init__(self, tokenizer, min_tokens: int = 16):
        self.tokenizer, self.min_tokens = tokenizer, min_tokens

    def should_fire(self, since_last_gate: Sequence[int]) -> bool:
        if len(since_last_gate) < max(1, self.min_tokens):
            return False
        text = self.tokenizer.decode(list(since_last_gate))
        return bool(text.strip()) and self.ends_paragraph(text)

    def ends_paragraph(self, text: str) -> bool:
        return text.endswith("\n\n")


@dataclass
class ThinkerWriterOptions:
    budgets: Sequence[int] = (1024,)  # decode steps (the thinker writes one token per step)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    gate_min_tokens: int = 16
    early_stop: bool = True
    finisher_max_tokens: int = 16
    forbid_special_tokens: bool = True

    def __post_init__(self):
        if not self.budgets or any(int(b) < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive step counts, got {list(self.budgets)}")
        if self.gate_min_tokens < 1:
            raise ValueError(f"gate_min_tokens must be >= 1, got {self.gate_min_tokens}")
        self.budgets = tuple(sorted({int(b) for b in self.budgets}))


@dataclass
class Gate:
    stream: str
    step: int
    decision: str


@dataclass
class StreamsSnapshot:
    budget: int
    steps: int
    finished_early: bool
    writer_text: str  # the Writer's visible text (no gate questions)
    thinker_text: str
    writer_tokens: int
    thinker_tokens: int
    gates: list[Gate]
    answer: str | None  # the finisher's answer; None when the Writer answered on its own (or no finisher)
    response: str
    wall_seconds: float


class ThinkerWriterGenerator:
    """``stop`` (on the Writer's tokens) and ``finisher`` are the task's hooks, as for `HogwildGenerator`."""

    def __init__(
        self,
        lm: HogwildLM,
        tokenizer,
        options: ThinkerWriterOptions | None = None,
        gate: ParagraphGate | None = None,
        stop: StopRule | None = None,
        finisher: Finisher | None = None,
    ):
        self.lm, self.tokenizer = lm, tokenizer
        self.stop, self.finisher = stop, finisher
        self.options = options or ThinkerWriterOptions()
        self.gate = gate or ParagraphGate(tokenizer, self.options.gate_min_tokens)
        self._special = list(tokenizer.all_special_ids) if self.options.forbid_special_tokens else []
        self.yes_id = self._encode(" yes")[0]
        self.no_id = self._encode(" no")[0]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _chat(self, system: str, problem: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": problem}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _setup(self, cache, problem: str) -> dict[str, list[int]]:
        """Prefill prompts, splits and openings (as the notebook: splits in the context of a copy of the
        other stream's opening); returns each stream's held-back last opening token."""
        lm = self.lm
        lm.prefill(cache, "writer_prompt", self._encode(self._chat(WRITER_SYSTEM, problem)))
        lm.prefill(cache, "thinker_prompt", self._encode(self._chat(THINKER_SYSTEM, problem)))
        thinker_open, writer_open = self._encode(THINKER_OPENING), self._encode(WRITER_OPENING)
        lm.prefill(cache, "thinker_for_writer", thinker_open, context=["writer_prompt"])
        lm.prefill(cache, "writer_for_thinker", writer_open, context=["thinker_prompt"])
        lm.prefill(cache, "writer_split", self._encode(WRITER_SPLIT), context=["writer_prompt", "thinker_for_writer"])
        lm.prefill(
            cache, "thinker_split", self._encode(THINKER_SPLIT), context=["thinker_prompt", "writer_for_thinker"]
        )
        lm.prefill(cache, "writer", writer_open[:-1], context=["writer_prompt", "thinker_for_writer", "writer_split"])
        lm.prefill(
            cache, "thinker", thinker_open[:-1], context=["thinker_prompt", "writer_for_thinker", "thinker_split"]
        )
        return {"thinker": thinker_open[-1:], "writer": writer_open[-1:]}

    def _ask(self, cache, stream: str, pending: list[int], question: str) -> str:
        logits = self.lm.forward(cache, [Write(VIEWS[stream], pending + self._encode(question))])[0]
        return "yes" if logits[self.yes_id] > logits[self.no_id] else "no"

    def generate(self, problem: str) -> dict[int, StreamsSnapshot]:
        opts = self.options
        started = time.perf_counter()
        sampler = Sampler(opts.sampling, self._special)
        cache = self.lm.new_cache()
        pending = self._setup(cache, problem)
        since_gate = {"thinker": [], "writer": []}
        visible = {"thinker": [], "writer": []}
        gates: list[Gate] = []
        state, steps, finished = "thinker", 0, False
        snapshots: dict[int, StreamsSnapshot] = {}
        while True:
            rows = ["thinker"] + (["writer"] if state == "both" else [])
            logits = self.lm.forward(cache, [Write(VIEWS[r], pending[r]) for r in rows])
            for budget in [b for b in opts.budgets if b == steps or (finished and b > steps)]:
                snapshots[budget] = self._snapshot(cache, budget, steps, finished, visible, gates, started)
            if finished or steps >= opts.budgets[-1]:
                break
            steps += 1
            for row, token in zip(rows, sampler(logits)):
                visible[row].append(token)
                since_gate[row].append(token)
                pending[row] = [token]
            asker = "thinker" if state == "thinker" else "writer"
            if self.gate.should_fire(since_gate[asker]):
                question = THINKER_GATE if asker == "thinker" else WRITER_GATE
                decision = self._ask(cache, asker, pending[asker], question)
                pending[asker] = self._encode(f" {decision}\n\n")
                since_gate[asker] = []
                gates.append(Gate(asker, steps, decision))
                if decision == "yes":
                    state = "both" if asker == "thinker" else "thinker"
            if opts.early_stop and self.stop is not None and self.stop(visible["writer"]):
                finished = True
        return snapshots

    def _snapshot(self, cache, budget, steps, finished, visible, gates, started) -> StreamsSnapshot:
        writer_text = self.tokenizer.decode(visible["writer"])
        answer, response = None, writer_text
        answered = self.stop is not None and self.stop(visible["writer"])
        if not answered and self.finisher is not None:
            answer = run_finisher(self.lm, cache, VIEWS["writer"], self.finisher, self.tokenizer,
                                  self.options.finisher_max_tokens, self._special)  # fmt: skip
            response = self.finisher.completed_response(writer_text, answer)
        return StreamsSnapshot(
            budget=budget,
            steps=steps,
            finished_early=finished,
            writer_text=writer_text,
            thinker_text=self.tokenizer.decode(visible["thinker"]),
            writer_tokens=len(visible["writer"]),
            thinker_tokens=len(visible["thinker"]),
            gates=list(gates),
            answer=answer,
            response=response,
            wall_seconds=time.perf_counter() - started,
        )
