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

from functools import lru_cache


class TokenPieces(dict):
    """Token id -> ``tokenizer.decode([id])``, filled on first use."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def __missing__(self, token: int) -> str:
        text = self[token] = self.tokenizer.decode([token])
        return text


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
