"""Sampled tokens of a stored record, whichever version of the record format it has."""

from __future__ import annotations

from collections.abc import Mapping


def sampled_tokens(record: Mapping) -> int:
    """The tokens the workers drew from the model. Records carry ``sampled_tokens`` since session 28; before, a
    Hogwild! record's ``worker_written_tokens`` sum to it; a record with neither has no inserted tokens, so its
    ``total_tokens`` are all sampled."""
    sampled = record.get("sampled_tokens")
    if sampled is not None and sampled == sampled:  # NaN in a DataFrame row of an older record
        return int(sampled)
    written = record.get("worker_written_tokens")
    if isinstance(written, list):
        return sum(written)
    return int(record["total_tokens"])
