"""Collaboration metrics: exact values on synthetic transcripts, and every field filled by real runs."""

import pytest

from hogwild_bench.collaboration import Piece, collaboration_metrics, transcript_of

CHECK = "Quick check: am I doing redundant work? (yes/no): "


def label(name: str, step: int = 0) -> Piece:
    return Piece(f"**{name} [1]:** ", step, inserted=True)


def test_redundancy_counts_only_five_grams_another_worker_wrote_strictly_earlier():
    alice = [label("Alice"), Piece("One two three four five six", 1)]
    bob = [label("Bob"), Piece("one two three, four five", 2), Piece(" seven", 3)]
    m = collaboration_metrics([alice, bob])
    # Bob's "one two three four five" (step 2) follows Alice's (step 1); "two three four five seven" is new
    assert m["redundancy_matrix"] == [[None, 0.0], [0.5, None]]
    assert m["redundancy"] == 0.25
    simultaneous = [label("Bob"), Piece("one two three four five", 1)]
    assert collaboration_metrics([alice, simultaneous])["redundancy_matrix"] == [[None, 0.0], [0.0, None]]


def test_inserted_text_is_never_the_workers_work():
    same_labels = [[Piece(CHECK * 3, 0, inserted=True), Piece("alpha beta", 1)] for _ in range(2)]
    assert collaboration_metrics(same_labels)["redundancy"] is None  # no 5-gram of written text at all


def test_answer_origin_names_who_boxed_it_first_and_who_wrote_the_value_before():
    alice = [label("Alice"), Piece("so x = 42 here", 3)]
    bob = [label("Bob"), Piece("the answer is \\boxed{ 42 }", 5)]
    m = collaboration_metrics([alice, bob], answer="42", end_step=9)
    assert (m["answer_boxed_by"], m["answer_boxed_step"]) == (1, 5)
    assert (m["answer_value_first_by"], m["answer_value_first_step"]) == (0, 3)
    assert m["answer_value_earlier_elsewhere"] is True
    forced = collaboration_metrics([alice, [label("Bob")]], answer="42", finisher_answered=True, end_step=9)
    assert (forced["answer_boxed_by"], forced["answer_boxed_step"]) == (-1, 9)  # only the finisher boxed it
    assert collaboration_metrics([alice], answer="7")["answer_value_first_by"] is None
    assert collaboration_metrics([alice], answer=None)["answer_boxed_by"] is None


def test_collaboration_checks_record_the_answer_and_redundancy_before_and_after():
    alice = [
        label("Alice"),
        Piece("alpha beta gamma delta epsilon zeta.", 1),
        Piece("\n\n**Alice [2]:** " + CHECK, 4, inserted=True),
        Piece("Yes. one two three four five", 5),
    ]
    bob = [label("Bob"), Piece("alpha beta gamma delta epsilon", 0)]
    m = collaboration_metrics([alice, bob])
    assert m["collab_checks"] == [
        {"worker": 0, "step": 4, "answer": "yes", "redundancy_before": 0.5, "redundancy_after": 0.0}
    ]
    assert m["collab_yes_rate"] == 1.0
    unclear = [*alice[:3], Piece("Maybe.", 5)]
    assert collaboration_metrics([unclear, bob])["collab_checks"][0]["answer"] is None


def test_idle_steps_count_the_steps_after_a_worker_ended():
    m = collaboration_metrics([[label("Alice")], [label("Bob")]], end_step=10, worker_ends=[("eos", 4), None])
    assert m["worker_idle_steps"] == [6, 0]


def test_transcript_groups_tokens_by_step_and_kind(tokenizer):
    ids = tokenizer.encode("ab cd ef", add_special_tokens=False)
    pieces = transcript_of([ids], [[0] * 2 + [3] * (len(ids) - 2)], [[True] * 2 + [False] * (len(ids) - 2)], tokenizer)
    assert [(p.step, p.inserted) for p in pieces[0]] == [(0, True), (3, False)]
    assert "".join(p.text for p in pieces[0]) == tokenizer.decode(ids)


def test_transcript_pieces_are_each_runs_own_decoded_text(tokenizer):
    """Pieces of several workers, decoded in one batch: each is exactly `decode` of its run of tokens."""
    workers = [tokenizer.encode(text, add_special_tokens=False) for text in ("ab cd ef gh", "x\n\ny z", "")]
    steps = [[k // 3 for k in range(len(ids))] for ids in workers]
    flags = [[k % 5 == 0 for k in range(len(ids))] for ids in workers]
    pieces = transcript_of(workers, steps, flags, tokenizer)
    for ids, step, flag, got in zip(workers, steps, flags, pieces):
        expected, start = [], 0
        for k in range(1, len(ids) + 1):
            if k == len(ids) or (step[k], flag[k]) != (step[start], flag[start]):
                expected.append(Piece(tokenizer.decode(ids[start:k]), step[start], flag[start]))
                start = k
        assert got == expected


FIELDS = {"redundancy": (float, type(None)), "redundancy_matrix": list, "answer_boxed_by": (int, type(None)),
          "answer_value_first_by": (int, type(None)), "collab_checks": list, "worker_idle_steps": list,
          "worker_written_tokens": list}  # fmt: skip


@pytest.mark.parametrize(
    "protocol",
    [["protocol.workers=2", "generation.collab_interval=4"], ["protocol=independent", "generation.temperature=0.7"]],
)
def test_every_hogwild_and_independent_record_carries_the_metrics(tmp_path, protocol):
    from conftest import compose_config, tiny_run_overrides

    from hogwild_bench.runner import run
    from hogwild_bench.store import ResultStore

    records = ResultStore(run(compose_config(tiny_run_overrides(tmp_path, "dataset.limit=2", *protocol)))).records()
    assert records and all(r["status"] == "ok" for r in records)
    for r in records:
        for name, kind in FIELDS.items():
            assert isinstance(r[name], kind), (name, r[name])
        assert len(r["redundancy_matrix"]) == r["workers"] == len(r["worker_written_tokens"])
        assert sum(r["worker_written_tokens"]) <= r["total_tokens"]


def test_analysis_tabulates_the_metrics_per_cell_and_plots_them_against_accuracy(tmp_path):
    from conftest import compose_config, tiny_run_overrides

    from hogwild_bench.analysis import collaboration, load_runs, plot_redundancy_vs_accuracy
    from hogwild_bench.runner import collaboration_cells, run
    from hogwild_bench.store import ResultStore

    overrides = tiny_run_overrides(tmp_path, "dataset.limit=2", "grid.workers=[2,3]")
    run_dir = run(compose_config(overrides))
    table = collaboration(load_runs(run_dir), by=["workers", "budget"])
    assert sorted(zip(table["workers"], table["budget"])) == [(2, 6), (2, 12), (3, 6), (3, 12)]
    assert (table["n"] == 2).all()
    measured = table["redundancy"].dropna()  # NaN where no worker has written five words yet
    assert len(measured) > 0 and measured.between(0, 1).all()
    assert plot_redundancy_vs_accuracy(run_dir, tmp_path / "r.png").stat().st_size > 0
    cells = collaboration_cells(ResultStore(run_dir).records())
    assert len(cells) == 4 and all(c["n"] == 2 for c in cells)
    with pytest.raises(KeyError, match="redundancy"):
        collaboration(load_runs(run_dir).drop(columns=["redundancy"]))


def test_the_engines_inserted_collaboration_prompts_are_found_in_its_transcript(models, tokenizer):
    from hogwild_bench.engine import GenerationOptions, HogwildGenerator, HogwildLM

    options = GenerationOptions(n_workers=2, layout="combined", budgets=(24,), collab_interval=4, early_stop=False)
    gen = HogwildGenerator(HogwildLM(models("llama")), tokenizer, options, boundary=lambda step: len(step) >= 6)
    snap = gen.generate("2+2?").snapshots[24]
    pieces = transcript_of(snap.worker_tokens, snap.worker_token_steps, snap.worker_inserted, tokenizer)
    checks = collaboration_metrics(pieces, end_step=24)["collab_checks"]
    inserted = sum(tokenizer.decode(t).count(CHECK.strip()) for t in snap.worker_tokens)
    assert inserted > 0 and len(checks) == inserted
    assert {c["worker"] for c in checks} == {0, 1} and all(0 < c["step"] <= 24 for c in checks)
    assert [flags.count(False) for flags in snap.worker_inserted] == [24, 24]  # one sampled token per step
    assert snap.sampled_tokens == 48 < snap.total_tokens  # tokens/s counts these, not the labels and prompts


class ScriptedLM:
    """Writes a fixed token script per worker, whatever it reads: one script token per forward of a worker."""

    def __init__(self, scripts, vocab_size):
        self.scripts, self.vocab_size, self.written = scripts, vocab_size, [0] * len(scripts)

    def new_cache(self):
        from hogwild_bench.engine import HogwildCache

        return HogwildCache(1, rope=None)

    def forward(self, cache, writes, **kwargs):
        import torch

        cache.begin_forward([w.view for w in writes], [w.tokens for w in writes])
        cache.end_forward(True)
        logits = torch.zeros(len(writes), self.vocab_size)
        for row, w in enumerate(writes):
            if w.view[-1].startswith("step"):
                i = int(w.view[-1][4:])
                script = self.scripts[i]
                logits[row, script[min(self.written[i], len(script) - 1)]] = 1.0
                self.written[i] += 1
        return logits


def test_on_one_token_script_hogwild_and_independent_workers_get_the_same_redundancy(tokenizer):
    """Redundancy measures what was written and when, not what was visible: on the same script, workers that
    shared a cache and workers that did not score the same, so `independent` is the chance-overlap baseline."""
    from hogwild_bench.engine import GenerationOptions, HogwildGenerator, Isolated, PromptFormat

    words = tokenizer.encode(" one two three four five six seven eight", add_special_tokens=False)
    filler = tokenizer.encode(" zero zero zero", add_special_tokens=False)
    scripts = [words + filler * 4, filler + words + filler]  # worker 1 repeats worker 0, later
    steps = len(scripts[0])
    metrics = {}
    for name, layout, extra in (
        ("hogwild", "combined", {}),
        ("independent", Isolated(), dict(first_steps=["", ""], per_worker=True)),
    ):
        options = GenerationOptions(n_workers=2, layout=layout, budgets=(steps,), early_stop=False,
                                    collab_interval=None, **extra)  # fmt: skip
        fmt = PromptFormat(tokenizer, 2 if name == "hogwild" else 1, layout="combined" if name == "hogwild" else
                           "contiguous", step_labels=name == "hogwild")  # fmt: skip
        lm = ScriptedLM(scripts, len(tokenizer))
        gen = HogwildGenerator(lm, tokenizer, options, prompt_format=fmt, boundary=lambda step: False)
        snap = gen.generate("2+2?").snapshots[steps]
        pieces = transcript_of(snap.worker_tokens, snap.worker_token_steps, snap.worker_inserted, tokenizer)
        metrics[name] = collaboration_metrics(pieces, end_step=steps)
    assert metrics["hogwild"]["redundancy_matrix"] == metrics["independent"]["redundancy_matrix"]
    assert metrics["hogwild"]["redundancy_matrix"][1][0] > 0.5 and metrics["hogwild"]["redundancy_matrix"][0][1] < 0.2
