"""Majority vote over answers, grouping math-verify-equivalent ones (self-consistency)."""

from __future__ import annotations

from dataclasses import dataclass, field

from math_verify import parse, verify


@dataclass
class VoteGroup:
    answer: str  # the first-seen spelling
    members: list[int] = field(default_factory=list)  # worker indices
    parsed: list = field(default_factory=list, repr=False)


@dataclass
class VoteResult:
    winner: str | None
    groups: list[VoteGroup]

    @property
    def counts(self) -> list[tuple[str, int]]:
        return [(g.answer, len(g.members)) for g in self.groups]


def _equivalent(a: VoteGroup, parsed: list, text: str, timeout: int) -> bool:
    if a.answer.strip() == text.strip():
        return True
    if not a.parsed or not parsed:
        return False
    try:
        return bool(
            verify(a.parsed, parsed, timeout_seconds=timeout) or verify(parsed, a.parsed, timeout_seconds=timeout)
        )
    except Exception:  # a comparison that times out or fails counts as different
        return False


def majority_vote(answers: list[str | None], timeout_seconds: int = 5) -> VoteResult:
    """The answer most workers agree on (equivalence by math-verify, both directions).

    Empty or missing answers do not vote. Ties go to the group whose first member has the lowest worker
    index, so the result is deterministic."""
    groups: list[VoteGroup] = []
    for worker, answer in enumerate(answers):
        if answer is None or not answer.strip():
            continue
        try:
            parsed = parse("\\boxed{" + answer + "}", parsing_timeout=timeout_seconds)
        except Exception:
            parsed = []
        for group in groups:
            if _equivalent(group, parsed, answer, timeout_seconds):
                group.members.append(worker)
                break
        else:
            groups.append(VoteGroup(answer=answer, members=[worker], parsed=parsed))
    if not groups:
        return VoteResult(winner=None, groups=[])
    best = max(groups, key=lambda g: (len(g.members), -g.members[0]))
    return VoteResult(winner=best.answer, groups=groups)
