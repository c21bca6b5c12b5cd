"""Experiment logging: nothing, or Weights & Biases (the user's ``WANDB_MODE``; offline without an API key).

W&B is a convenience, never a dependency of the results: every call is guarded, and the first failure
turns the tracker off with one warning while the run goes on (results are in the store regardless).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from hogwild_bench.config import LoggerConfig, LoggerName


class Tracker:
    """No-op tracker (``logger=none``); subclasses send the same calls somewhere."""

    def log_problem(self, done: int, total: int, accuracy: float | None, rows_per_second: float | None = None) -> None:
        pass

    def log_summary(
        self, curves: dict[str, list[tuple[int, float]]], transcripts: list[dict], cells: list[dict] | None = None
    ) -> None:
        pass

    def finish(self) -> None:
        pass


def wandb_mode(cfg: LoggerConfig) -> str:
    """``logger.mode`` if set, else the user's ``WANDB_MODE``, else online with an API key and offline without."""
    return cfg.mode or os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


class WandbTracker(Tracker):
    def __init__(self, cfg: LoggerConfig, run_name: str, config: dict, run_dir: Path, shard: tuple[int, int]):
        self.cfg, self.run = cfg, None
        mode = wandb_mode(cfg)
        index, count = shard
        name = run_name if count == 1 else f"{run_name}-shard{index}of{count}"
        self._guard(
            "init",
            lambda: self._init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group or run_name,
                name=name,
                id=_wandb_id(name),
                resume="allow",
                config=config,
                dir=str(run_dir),
                mode=mode,
                init_timeout=cfg.init_timeout_seconds,
            ),
        )

    def _init(self, init_timeout: float, **kwargs):
        import wandb

        self.run = wandb.init(settings=wandb.Settings(init_timeout=init_timeout), **kwargs)
        self.run.define_metric("budget")
        self.run.define_metric("accuracy/*", step_metric="budget")
        self.run.define_metric("progress/*")

    def _guard(self, what: str, call) -> None:
        if what != "init" and self.run is None:
            return
        try:
            call()
        except Exception as error:  # W&B unreachable or misconfigured: warn once, keep running
            warnings.warn(f"W&B {what} failed ({type(error).__name__}: {error}); continuing without W&B", stacklevel=2)
            self.run = None

    def log_problem(self, done: int, total: int, accuracy: float | None, rows_per_second: float | None = None) -> None:
        payload = {"progress/problems_done": done, "progress/problems_total": total}
        if accuracy is not None:
            payload["progress/running_accuracy"] = accuracy
        if rows_per_second is not None:  # forward rows: sampled and inserted tokens (`runner.Throughput`)
            payload["progress/forward_rows_per_second"] = rows_per_second
        self._guard("log", lambda: self.run.log(payload))

    def log_summary(
        self, curves: dict[str, list[tuple[int, float]]], transcripts: list[dict], cells: list[dict] | None = None
    ) -> None:
        """Accuracy curves, sample transcripts and (``cells``) the collaboration metrics' means per cell."""

        def send():
            import wandb

            budgets = sorted({b for points in curves.values() for b, _ in points})
            for budget in budgets:
                row = {"budget": budget}
                row.update({f"accuracy/{label}": acc for label, points in curves.items() for b, acc in points
                            if b == budget})  # fmt: skip
                self.run.log(row)
            table = wandb.Table(columns=["point", "budget", "accuracy"])
            for label, points in curves.items():
                for budget, acc in points:
                    table.add_data(label, budget, acc)
            self.run.log({"accuracy_vs_tokens": wandb.plot.line(table, "budget", "accuracy", stroke="point",
                                                                 title="Accuracy vs tokens per worker")})  # fmt: skip
            if cells:
                columns = list(cells[0])
                self.run.log({"collaboration": wandb.Table(columns=columns, data=[[c[k] for k in columns]
                                                                                   for c in cells])})  # fmt: skip
            if transcripts:
                columns = list(transcripts[0])
                self.run.log({"transcripts": wandb.Table(columns=columns, data=[[t[c] for c in columns]
                                                                                 for t in transcripts])})  # fmt: skip

        self._guard("log", send)

    def finish(self) -> None:
        self._guard("finish", lambda: self.run.finish())


def _wandb_id(name: str) -> str:
    import hashlib

    return hashlib.sha1(name.encode()).hexdigest()[:16]


def make_tracker(cfg: LoggerConfig, run_name: str, config: dict, run_dir: Path, shard: tuple[int, int]) -> Tracker:
    if cfg.name == LoggerName.wandb:
        return WandbTracker(cfg, run_name, config, run_dir, shard)
    return Tracker()
