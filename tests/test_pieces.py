"""The per-token pre-checks of the step boundary and the boxed-answer stop never change their answer."""

import random

from hogwild_bench.answers import last_boxed, stop_on_boxed, top_level_boxed
from hogwild_bench.engine.generation import _SENTENCE_THEN_PARAGRAPH, ParagraphBoundary
from hogwild_bench.engine.pieces import encode_short, rule_decoder, token_pieces, tokens_holding, vocabulary

TEXTS = [
    "First we add.\n\nThen we divide: 12/4 = 3.\n\n",
    "So the answer is \\boxed{72}.\n\nCheck: 48 + 24 = 72! \\boxed{\\frac{1}{2}}",
    "Hmm) 'quoted.'\n\n**Alice [2]:** next?\n\n\\boxed{a}\\boxed{b}",
    "Ünïcödé — ok.\n\n中文。\n\n😀 done.\n\n",
]


def token_streams(tokenizer, seed=0):
    """Every prefix of real texts' tokens, plus random token soup."""
    rng = random.Random(seed)
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        yield from (ids[:k] for k in range(1, len(ids) + 1))
    vocab = len(tokenizer)
    for _ in range(200):
        yield [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]


def test_the_paragraph_boundary_equals_the_regex_on_the_decoded_tail(tokenizer):
    boundary = ParagraphBoundary(tokenizer)
    for ids in token_streams(tokenizer):
        expected = bool(_SENTENCE_THEN_PARAGRAPH.search(tokenizer.decode(ids[-8:])))
        assert boundary(ids) == expected, tokenizer.decode(ids)
    assert boundary(tokenizer.encode("Done.\n\n", add_special_tokens=False))


def test_the_boxed_stop_equals_decoding_every_window(tokenizer):
    for count in (1, 2):
        stop = stop_on_boxed(tokenizer, count=count, window=16)
        for ids in token_streams(tokenizer, seed=count):
            window = last_boxed(tokenizer.decode(ids[-16:])) is not None
            expected = window and (count == 1 or len(top_level_boxed(tokenizer.decode(ids))) >= count)
            assert stop(ids) == expected, tokenizer.decode(ids)


def first_stop(stop, ids, chunks, skip: bool) -> int | None:
    """Write ``ids`` in writes of the given sizes, asking ``stop`` after each as the generation loop does:
    the length at which it first answers true. ``skip``: not asking when ``stop.triggered_by`` says the write
    cannot change the answer."""
    checked, end = 0, 0
    for size in chunks:
        end = min(len(ids), end + size)
        new, checked = ids[checked:end], end
        if (not skip or stop.triggered_by(new)) and stop(ids[:end]):
            return end
        if end == len(ids):
            return None
    return None


def test_the_boxed_stop_skipped_on_writes_without_a_brace_fires_where_it_would_have(tokenizer):
    """The loop asks the stop rule only after writes holding ``}``: the rule first fires at the same token as
    when asked after every write (one token at a time, or several at once as step headers are written)."""
    rng = random.Random(5)
    streams = [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
    streams += [tokenizer.encode(t + " " + u, add_special_tokens=False) for t in TEXTS for u in TEXTS]
    vocab = len(tokenizer)
    streams += [[rng.randrange(vocab) for _ in range(rng.randrange(1, 120))] for _ in range(200)]
    fired = 0
    for count in (1, 2):
        stop = stop_on_boxed(tokenizer, count=count, window=16)
        for ids in streams:
            for chunks in ([1] * len(ids), [rng.randrange(1, 6) for _ in ids]):
                every = first_stop(stop, ids, chunks, skip=False)
                assert first_stop(stop, ids, chunks, skip=True) == every, tokenizer.decode(ids)
                fired += every is not None
    assert fired > 10  # the texts do close boxes


def test_tokens_holding_a_fragment_equals_reading_each_token_text(tokenizer):
    pieces = token_pieces(tokenizer)
    for fragment in ("}", "\n"):
        holding = tokens_holding(tokenizer, fragment)
        for ids in token_streams(tokenizer, seed=len(fragment)):
            assert holding.any_in(ids) == any(fragment in pieces[t] for t in ids), tokenizer.decode(ids)
    assert tokens_holding(tokenizer, "}") is tokens_holding(tokenizer, "}")


def test_the_rules_decoder_gives_the_tokenizers_text(tokenizer):
    """The per-token rules decode through the fast backend directly: the same text as `decode`."""
    decode = rule_decoder(tokenizer)
    for ids in token_streams(tokenizer, seed=3):
        assert decode(ids) == tokenizer.decode(ids)
        assert decode(tuple(ids)) == tokenizer.decode(ids)


def test_the_rules_decoder_of_a_tokenizer_without_a_fast_backend_is_its_decode():
    class SlowTokenizer:
        def decode(self, ids):
            return "|".join(map(str, ids))

    assert rule_decoder(SlowTokenizer())((3, 4)) == "3|4"


def test_one_table_per_tokenizer(tokenizer):
    assert token_pieces(tokenizer) is token_pieces(tokenizer)
    assert token_pieces(tokenizer)[tokenizer.encode("\n", add_special_tokens=False)[-1]].endswith("\n")


def test_the_vocabulary_is_read_once_per_tokenizer_not_once_per_generation(monkeypatch):
    """`get_vocab` of a 150k vocabulary takes ~0.1 s; it once cost a real sweep 20 % of its wall time."""
    from hogwild_bench.engine.generation import end_of_turn_ids
    from hogwild_bench.engine.prompts import PromptFormat
    from hogwild_bench.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer("qwen")
    reads = []
    original = type(tokenizer).get_vocab
    monkeypatch.setattr(type(tokenizer), "get_vocab", lambda self: reads.append(1) or original(self))
    for _ in range(3):
        end_of_turn_ids(tokenizer)
        PromptFormat(tokenizer, 2, layout="combined", think_prefix="auto").prompt_text("2+2?")
    assert len(reads) == 1
    tokenizer.add_tokens(["<new-token>"])  # a changed vocabulary is read again
    assert "<new-token>" in vocabulary(tokenizer)


def test_short_texts_encode_as_the_tokenizer_does_once_each(monkeypatch):
    """Step headers repeat across a sweep: each is encoded once, and a caller extending the ids it got back
    does not change what the next caller gets."""
    from hogwild_bench.engine.prompts import PromptFormat
    from hogwild_bench.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer("qwen")
    fmt = PromptFormat(tokenizer, 3, layout="interleaved")
    headers = [fmt.step_prefix(w, s) for w in range(3) for s in range(1, 30)] + [fmt.collab_prompt, *TEXTS]
    expected = [tokenizer.encode(h, add_special_tokens=False) for h in headers]
    calls = []
    original = type(tokenizer).encode
    monkeypatch.setattr(type(tokenizer), "encode", lambda self, *a, **k: calls.append(a[0]) or original(self, *a, **k))
    for _ in range(3):
        got = [fmt.encode(h) for h in headers]
        assert got == expected
        got[0].append(-1)
    assert sorted(calls) == sorted(set(headers))
    long_text = "x" * 1000  # prompts are not kept
    assert encode_short(tokenizer, long_text) == original(tokenizer, long_text, add_special_tokens=False)
    tokenizer.add_tokens(["**Alice"])  # a changed vocabulary encodes afresh
    assert fmt.encode("**Alice [1]:** ") == original(tokenizer, "**Alice [1]:** ", add_special_tokens=False)
