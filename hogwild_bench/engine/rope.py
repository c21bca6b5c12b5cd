"""Relative RoPE shifts: the one piece of position math the engine needs.

RoPE makes the attention score depend only on ``q_pos - k_pos``. So keys can be stored at positions local
to their block, and a block can sit at a different offset in every worker's view: rotating the *query* by
``own_offset - block_offset`` (or the keys by ``block_offset``) gives exactly the scores of the flattened
view. That holds for every rope type whose rotation is a fixed function of the position (frequencies
that do not depend on the sequence length); the others are refused up front.
"""

from __future__ import annotations

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class UnsupportedModelError(ValueError):
    """The model cannot run under Hogwild! semantics; the message says why and what is supported."""


def _rope_parameters(config) -> dict:
    params = getattr(config, "rope_parameters", None)
    if params is None:
        params = getattr(config, "rope_scaling", None) or {}
    return dict(params)


def check_model_supported(config) -> None:
    """Refuse models whose attention is not a pure function of relative position.

    Raises `UnsupportedModelError` naming the model type and the reason.
    """
    model_type = getattr(config, "model_type", type(config).__name__)
    params = _rope_parameters(config)
    if params and all(isinstance(v, dict) for v in params.values()):
        raise UnsupportedModelError(
            f"model type {model_type!r} uses per-layer-type rope parameters ({sorted(params)}); "
            f"hogwild_bench supports one rope of type {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if getattr(config, "no_rope_layers", None) or getattr(config, "use_rope", True) is False:
        raise UnsupportedModelError(
            f"model type {model_type!r} has layers without RoPE; block offsets cannot be re-positioned"
        )
    if not params and getattr(config, "rope_theta", None) is None:
        raise UnsupportedModelError(
            f"model type {model_type!r} has no rotary position embedding; Hogwild! re-positions cached blocks "
            "by RoPE shifts and needs it"
        )
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"model type {model_type!r} uses rope_type={rope_type!r}, whose frequencies depend on the sequence "
            f"length, so a shifted block is not the same as a re-computed one; supported rope types: "
            f"{', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", True)
    layer_types = getattr(config, "layer_types", None) or []
    if (window is not None and uses_window) or any(t != "full_attention" for t in layer_types):
        raise UnsupportedModelError(
            f"model type {model_type!r} uses sliding-window attention (sliding_window={window}); workers' views "
            "would lose different tokens at different offsets. Set config.sliding_window=None if your contexts "
            "never exceed the window"
        )


def find_rotary_module(model: torch.nn.Module) -> torch.nn.Module:
    """The model's rotary-embedding module (the one holding ``inv_freq``)."""
    for module in model.modules():
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor):
            return module
    raise UnsupportedModelError(f"{type(model).__name__} has no rotary embedding module with `inv_freq`")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


SHIFTS_TABLE_MIN = 1024  # rows of the first cos/sin table of int deltas per device (it doubles as deltas grow)


class RotaryShift:
    """Rotates vectors by a position *delta*, with the model's own frequencies and no attention scaling.

    The model has already applied its rotation (and, for yarn, its scaling factor) once at the block-local
    position; composing with a pure rotation by ``delta`` moves the vector to ``local + delta``.
    """

    def __init__(self, inv_freq: torch.Tensor):
        self.inv_freq = inv_freq.detach().to(torch.float32).cpu()
        self._by_device: dict[torch.device, torch.Tensor] = {}
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._rows: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> RotaryShift:
        check_model_supported(model.config)
        return cls(find_rotary_module(model).inv_freq)

    @classmethod
    def from_config(cls, config) -> RotaryShift:
        """The same frequencies the model's rotary module computes, from its config alone."""
        check_model_supported(config)
        params = _rope_parameters(config)
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type == "default":
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            dim = int(head_dim * params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)))
            base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
            inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            inv_freq, _ = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
        return cls(inv_freq)

    def _freqs(self, device: torch.device) -> torch.Tensor:
        if device not in self._by_device:
            self._by_device[device] = self.inv_freq.to(device)
        return self._by_device[device]

    def cos_sin(self, delta: torch.Tensor | int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of shape ``[*delta.shape, head_dim]`` (float32; do not modify them in place).

        An int delta's pair is a row of a table per device, every delta from 0 up (doubled when a larger one comes):
        every commit shifts a block by the length of the one it joins, four small launches each time when computed
        afresh (3.1 % of a real sweep's batch loop, py-spy, session 17), and a row is a view, no launch. The
        table's rows are the same float32 products and the same cos/sin as a fresh computation, bit for bit. It
        holds 8 x head_dim bytes per delta (32 MB at 32k positions and head_dim 128); the row views handed out
        are kept too, one pair per delta seen (session 17 kept up to 4,096 deltas and then started again: a
        sweep's lengths, up to 4 x 2,048, mostly missed)."""
        if isinstance(delta, torch.Tensor):
            return self._cos_sin(delta.to(device=device, dtype=torch.float32)[..., None] * self._freqs(device))
        device, delta = torch.device(device), int(delta)
        pair = self._rows.get((device, delta))  # the row views already made: a lookup is cheaper than a view
        if pair is not None:
            return pair
        table = self._tables.get(device)
        if table is None or not 0 <= delta < len(table[0]):
            capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
            if delta < 0 or capturing:  # a captured graph's memory is not for keeping
                return self._cos_sin(self._freqs(device) * float(delta))
            rows = max(SHIFTS_TABLE_MIN, 1 << delta.bit_length())
            with torch.inference_mode(False):  # plain tensors, usable in and out of inference mode
                angles = torch.arange(rows, device=device, dtype=torch.float32)[:, None] * self._freqs(device)
                table = self._tables[device] = self._cos_sin(angles)
            self._rows = {key: row for key, row in self._rows.items() if key[0] != device}  # views of the old one
        with torch.inference_mode(False):
            pair = self._rows[device, delta] = (table[0][delta], table[1][delta])
        return pair

    @staticmethod
    def _cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    def rotate(self, x: torch.Tensor, delta: torch.Tensor | int) -> torch.Tensor:
        """Rotate ``x[..., T, D]`` by ``delta`` (an int, or a tensor broadcastable to ``x.shape[:-1]``)."""
        if isinstance(delta, int) and delta == 0:
            return x
        cos, sin = self.cos_sin(delta, x.device)
        xf = x.float()
        return (xf * cos + rotate_half(xf) * sin).to(x.dtype)
