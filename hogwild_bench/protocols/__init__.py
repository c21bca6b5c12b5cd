"""Protocols: how workers are arranged to solve one problem. Importing this package registers them."""

from hogwild_bench.protocols import baselines, hogwild  # noqa: F401  (registers every protocol)
from hogwild_bench.protocols.base import (
    PROTOCOLS,
    BudgetOutcome,
    GridPoint,
    Protocol,
    ProtocolContext,
    build_protocol,
    register_protocol,
)

__all__ = ["PROTOCOLS", "BudgetOutcome", "GridPoint", "Protocol", "ProtocolContext", "build_protocol",
           "register_protocol"]  # fmt: skip
