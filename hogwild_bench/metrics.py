"""Per-record text measures computed from what a generation wrote.

Degeneration: a worker that repeats itself (a sentence written again and again until the budget) is
recorded, not hidden. The measure is the zlib compression ratio of the worker's text (raw bytes /
compressed bytes): ordinary prose and math compress 2-3x at these lengths, a loop of one sentence 8x and
more. A worker is flagged degenerate above `DEGENERATE_RATIO` once it has written `MIN_CHARS` characters
(shorter texts compress poorly whatever they say). Failure modes: long tables or lists of similar
numbers compress well without being degenerate; a loop of slightly varying sentences can stay under the
threshold.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

DEGENERATE_RATIO = 4.0
MIN_CHARS = 400


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    if not raw:
        return 0.0
    return len(raw) / len(zlib.compress(raw, 9))


def repetition(texts: Sequence[str]) -> dict:
    """``worker_compression`` (one ratio per worker, rounded) and ``degenerate`` (any worker flagged)."""
    ratios = [compression_ratio(t) for t in texts]
    flagged = [r > DEGENERATE_RATIO and len(t) >= MIN_CHARS for r, t in zip(ratios, texts)]
    return {"worker_compression": [round(r, 3) for r in ratios], "degenerate": any(flagged)}
