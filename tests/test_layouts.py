"""Literal layouts: the exact block order of every worker's view (the oracle and the replay both take views
from `Layout`, so these are the independent check of the layouts themselves)."""

from hogwild_bench.engine.layouts import Combined, Contiguous, Interleaved, Isolated


def test_combined_for_three_workers():
    layout = Combined()
    assert layout.view(0, 3) == ["prompt", "history", "others_header", "step1", "separator", "step2", "separator",
                                 "own_header", "step0"]  # fmt: skip
    assert layout.view(1, 3) == ["prompt", "history", "others_header", "step0", "separator", "step2", "separator",
                                 "own_header", "step1"]  # fmt: skip
    assert layout.view(2, 3) == ["prompt", "history", "others_header", "step0", "separator", "step1", "separator",
                                 "own_header", "step2"]  # fmt: skip
    assert layout.finisher_view(3) == layout.view(0, 3)
    assert layout.constants == {"others_header": "\n\n### Work in progress (others)\n\n", "separator": " <...>\n\n",
                                "own_header": "### Work in progress (own)\n\n"}  # fmt: skip


def test_contiguous_for_three_workers():
    layout = Contiguous()
    assert layout.view(0, 3) == ["prompt", "step1", "step2", "step0"]
    assert layout.view(1, 3) == ["prompt", "step0", "step2", "step1"]
    assert layout.view(2, 3) == ["prompt", "step0", "step1", "step2"]
    assert not layout.has_history and layout.constants == {}


def test_interleaved_for_three_workers():
    layout = Interleaved()
    assert [layout.view(i, 3) for i in range(3)] == [["prompt", "history", f"step{i}"] for i in range(3)]
    assert layout.finisher_view(3) == ["prompt", "history", "step1", "step2", "step0"]


def test_isolated_workers_share_only_the_prompt():
    assert [Isolated().view(i, 2) for i in range(2)] == [["prompt", "step0"], ["prompt", "step1"]]
