"""Next-token choice: greedy or temperature/top-p sampling, reproducible from a seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """``temperature=0`` is greedy. ``seed`` fixes the draws bit-for-bit on the same device."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    forbidden_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class Sampler:
    def __init__(self, params: SamplingParams, extra_forbidden: Sequence[int] = ()):
        self.params = params
        self.forbidden = sorted(set(params.forbidden_token_ids) | set(extra_forbidden))
        self._generators: dict[torch.device, torch.Generator] = {}
        self._masks: dict[tuple[torch.device, int], torch.Tensor] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.params.seed)
        return self._generators[device]

    def _mask(self, device: torch.device, vocab: int) -> torch.Tensor:
        if (device, vocab) not in self._masks:
            mask = torch.zeros(vocab, device=device)
            mask[[i for i in self.forbidden if i < vocab]] = float("-inf")
            self._masks[(device, vocab)] = mask
        return self._masks[(device, vocab)]

    def __call__(self, logits: torch.Tensor) -> list[int]:
        """``logits [rows, V]`` -> one token id per row."""
        logits = logits.float()
        if self.forbidden:  # one add of a cached 0 / -inf row (no copy, no scatter per call)
            logits = logits + self._mask(logits.device, logits.shape[-1])
        if self.params.temperature == 0:
            return logits.argmax(-1).tolist()
        probs = torch.softmax(logits / self.params.temperature, dim=-1)
        if self.params.top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            before = sorted_probs.cumsum(-1) - sorted_probs
            sorted_probs = sorted_probs.masked_fill(before >= self.params.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=self._generator(probs.device)).flatten().tolist()
