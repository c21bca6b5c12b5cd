"""Final answers in model text: ``\\boxed{...}`` extraction (one linear pass) and the stop/finisher hooks
the engine's decoding loop takes for math tasks.

The engine knows nothing of answers; the framework passes it `stop_on_boxed` (end a generation once
the wanted number of boxed answers is written) and `BOXED_FINISHER` (the s1-style suffix that forces
an answer at a budget, and how to read the forced answer back).
"""

from __future__ import annotations

from dataclasses import dataclass

from hogwild_bench.engine.pieces import rule_decoder, tokens_holding

BOX = "\\boxed{"
# what an instruction-following model may copy from a prompt instead of answering
PLACEHOLDER_ANSWERS = frozenset({"answer", "final answer", "your answer", "ans", "...", "x", "n"})


@dataclass(frozen=True)
class Boxed:
    start: int  # index of the content's first character
    end: int  # index of the closing brace
    nested: bool  # inside another complete box
    content: str


def boxed_spans(text: str) -> list[Boxed]:
    """Every complete ``\\boxed{...}`` (balanced braces), ordered by where its content starts.

    One pass over ``text`` with a stack of open boxes, so a 100k-character response of unclosed
    ``\\boxed{\\boxed{...`` costs linear time, not quadratic."""
    found: list[Boxed] = []
    open_boxes: list[tuple[int, int]] = []  # (content start, brace depth inside the box)
    depth, i, n = 0, 0, len(text)
    while i < n:
        if text.startswith(BOX, i):
            depth += 1
            open_boxes.append((i + len(BOX), depth))
            i += len(BOX)
            continue
        char = text[i]
        if char == "{":
            depth += 1
        elif char == "}" and depth > 0:
            if open_boxes and open_boxes[-1][1] == depth:
                start, _ = open_boxes.pop()
                found.append(Boxed(start, i, bool(open_boxes), text[start:i]))
            depth -= 1
        i += 1
    return sorted(found, key=lambda b: b.start)


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{}`` (the innermost, if boxes nest), or None."""
    spans = boxed_spans(text)
    return spans[-1].content if spans else None


def top_level_boxed(text: str) -> list[str]:
    """Contents of the complete boxes that are not inside another box, in order of writing."""
    return [b.content for b in boxed_spans(text) if not b.nested]


def is_placeholder(answer: str | None) -> bool:
    """True for an answer copied from the instructions (``\\boxed{answer}``) rather than computed."""
    return answer is not None and answer.strip().strip("$").strip().lower() in PLACEHOLDER_ANSWERS


def stop_on_boxed(tokenizer, count: int = 1, window: int = 64):
    """A stop rule for the engine: a worker is done once its text holds ``count`` complete boxed answers.

    Each check decodes only the last ``window`` tokens, and only when one of them holds ``}``; it scans for
    balanced boxes only when that text holds ``\\boxed{``, and decodes the whole text (to count boxes) only
    when the window closes a box, so the check stays cheap on every step."""
    braces, decode = tokens_holding(tokenizer, "}"), rule_decoder(tokenizer)

    def stop(tokens) -> bool:
        recent = list(tokens[-window:])
        if not braces.any_in(recent):  # no box can close without its brace
            return False
        text = decode(recent)
        if BOX not in text or last_boxed(text) is None:
            return False
        return count == 1 or len(top_level_boxed(decode(tokens))) >= count

    # a box closes only with a brace: while the rule answers false, only a new token holding ``}`` can change that
    # (the box would lie within the previous window too; the loop calls ``stop`` after every write)
    stop.triggered_by = braces.any_in
    return stop


@dataclass(frozen=True)
class BoxedFinisher:
    """The s1-style finisher: a suffix ending in ``\\boxed{`` is appended at a budget and the answer is
    decoded greedily until its brace closes (or ``max_tokens`` run out)."""

    suffix: str = "\n\nTime is up: I will stop here and give the final answer now.\n\n**Final Answer:** \\boxed{"

    def done(self, text: str) -> bool:
        """``text`` (what was decoded after the suffix) closes the box."""
        return last_boxed(BOX + text) is not None

    def answer(self, text: str) -> str:
        closed = last_boxed(BOX + text)
        return closed if closed is not None else text

    def completed_response(self, body: str, answer: str) -> str:
        return body + self.suffix + answer + "}"


BOXED_FINISHER = BoxedFinisher()
