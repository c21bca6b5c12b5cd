"""Each token's text decoded alone, and the vocabulary, memoized per tokenizer.

Rules that run on every sampled token of every row (does the step end here? did the worker just close
its boxed answer?) decode a window of recent tokens, ~10-60 µs each: with 200 rows in a batched forward
that is milliseconds per step. Most tokens cannot change the answer (a window can only end in a paragraph
break if its last token's text ends in a newline; a box can only be complete if some token in the window
holds ``}``), and a token's own text says so: those checks read this table and decode only when they must.
Byte-level and byte-fallback tokenizers keep every ASCII character inside one token, so the pre-checks
never skip a window that would have matched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache


class TokenPieces(dict):
    """Token id -> ``tokenizer.decode([id])``, filled on first use."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def __missing__(self, token: int) -> str:
        text = self[token] = self.tokenizer.decode([token])
        return text


class TokensHolding:
    """The token ids whose text contains ``fragment``, each classified the first time it is seen, so that
    "does any of these 64 tokens hold ``}``?" is a set operation rather than 64 Python-level lookups (it runs
    for every sampled token of every row: 26 M lookups in 150 s of a real sweep)."""

    def __init__(self, pieces: TokenPieces, fragment: str):
        self.pieces, self.fragment = pieces, fragment
        self.seen: set[int] = set()
        self.holding: set[int] = set()

    def any_in(self, tokens) -> bool:
        for token in set(tokens).difference(self.seen):
            self.seen.add(token)
            if self.fragment in self.pieces[token]:
                self.holding.add(token)
        return not self.holding.isdisjoint(tokens)


@lru_cache(maxsize=16)
def tokens_holding(tokenizer, fragment: str) -> TokensHolding:
    """The one `TokensHolding` of ``tokenizer`` for ``fragment``."""
    return TokensHolding(token_pieces(tokenizer), fragment)


@lru_cache(maxsize=8)
def _vocabulary(tokenizer, size: int) -> dict[str, int]:
    return tokenizer.get_vocab()


def vocabulary(tokenizer) -> dict[str, int]:
    """``tokenizer.get_vocab()``, read once per tokenizer and size (for a 150k vocabulary it takes ~0.1 s, and
    every generation asks for it: measured 20 % of a real sweep's wall time). Do not modify the result."""
    return _vocabulary(tokenizer, len(tokenizer))


@lru_cache(maxsize=8)
def token_pieces(tokenizer) -> TokenPieces:
    """The one table of ``tokenizer`` (shared by every generation that uses it)."""
    return TokenPieces(tokenizer)


SHORT_TEXT_CHARS = 256  # step headers and collaboration prompts; prompts are longer and seldom repeat
SHORT_TEXTS_KEPT = 4096


def encode_short(tokenizer, text: str) -> list[int]:
    """``tokenizer.encode(text, add_special_tokens=False)``, remembered per short text and tokenizer size:
    every step of every worker starts with a header (``**Bob [7]:** ``, now and then a collaboration prompt)
    that a sweep encodes again and again (4.3 % of a real sweep's batch loop with the prompts, py-spy,
    session 17). Returns a new list each call, so a caller may extend it."""
    if len(text) > SHORT_TEXT_CHARS:
        return tokenizer.encode(text, add_special_tokens=False)
    known = _short_texts(tokenizer, len(tokenizer))
    ids = known.get(text)
    if ids is None:
        if len(known) >= SHORT_TEXTS_KEPT:
            known.clear()
        ids = known[text] = tuple(tokenizer.encode(text, add_special_tokens=False))
    return list(ids)


@lru_cache(maxsize=8)
def _short_texts(tokenizer, size: int) -> dict[str, tuple[int, ...]]:
    return {}


def _fast_backend(tokenizer):
    """The fast tokenizer behind ``tokenizer`` when its decode is exactly the backend's (no space clean-up)."""
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    return getattr(tokenizer, "backend_tokenizer", None)


@lru_cache(maxsize=8)
def rule_decoder(tokenizer) -> Callable[[Sequence[int]], str]:
    """``tokenizer.decode`` for rules that read a window of recent text (does the step end here? is a box
    closed?), run on every sampled token: the fast tokenizer's own decode where that gives the same text,
    without transformers' per-call argument conversion (about half of each call, measured on a real sweep's
    ~500k calls in 120 s)."""
    backend = _fast_backend(tokenizer)
    if backend is None:
        return lambda ids: tokenizer.decode(list(ids))
    return lambda ids: backend.decode(list(ids), skip_special_tokens=False)


@lru_cache(maxsize=8)
def batch_decoder(tokenizer) -> Callable[[Sequence[Sequence[int]]], list[str]]:
    """``[tokenizer.decode(ids) for ids in batch]`` in one call into the fast tokenizer where that gives the
    same texts (a transcript decodes thousands of one-token pieces per record)."""
    backend = _fast_backend(tokenizer)
    if backend is None:
        return lambda batch: [tokenizer.decode(list(ids)) for ids in batch]
    return lambda batch: backend.decode_batch([list(ids) for ids in batch], skip_special_tokens=False)
