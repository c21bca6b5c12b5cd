"""The memory floor's weight term: what a decode step must read of the model."""

from hogwild_bench.bench import weight_bytes_read
from hogwild_bench.tiny import tiny_model


def _bytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def test_a_step_reads_every_weight_but_the_embedding_rows_it_does_not_need():
    untied = tiny_model("qwen2", tie_word_embeddings=False)
    all_bytes = sum(_bytes(p) for p in untied.parameters())
    assert weight_bytes_read(untied) == all_bytes - _bytes(untied.get_input_embeddings().weight)


def test_a_tied_output_layer_reads_the_whole_embedding_table():
    tied = tiny_model("qwen2", tie_word_embeddings=True)
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    assert weight_bytes_read(tied) == sum(_bytes(p) for p in tied.parameters())
