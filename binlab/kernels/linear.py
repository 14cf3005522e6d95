"""An inference-only binarized linear layer over the packed kernels."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from binlab.kernels.packing import pack_signs, words_for
from binlab.kernels.products import PackedWeight, _product

__all__ = ["BinaryLinear"]


class BinaryLinear(nn.Module):
    """Inference-only binarized linear layer: ``y = alpha * (sign(x) @ sign(W).T) + b``.

    The input is binarized (sign(0) = +1) and packed on every call; the weight signs are packed
    once, at construction. ``alpha`` is one scale per output feature (a per-tensor scale is
    repeated). The output is float32, equal to the float formula up to float rounding; no
    gradients flow through it (train with the quantizers, then convert with :meth:`from_float`).

    Build it with :meth:`from_float`. Buffers (saved in ``state_dict``): ``weight_words``
    ``[N, KW]`` (the packed signs as int64 words; the bits are what counts), ``alpha`` ``[N]`` and
    ``bias`` ``[N]`` (zeros when there is none).
    """

    def __init__(self, in_features: int, out_features: int, backend: str | None = None):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"BinaryLinear: features must be positive, got in={in_features}, "
                             f"out={out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.backend = backend
        kw = words_for(in_features)
        self.register_buffer("weight_words", torch.zeros(out_features, kw, dtype=torch.int64))
        self.register_buffer("alpha", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features))
        self._packed: PackedWeight | None = None

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   alpha: str | float | torch.Tensor | None = None,
                   backend: str | None = None) -> BinaryLinear:
        """Binarize a float weight ``[out_features, in_features]``.

        Args:
            weight: the float weight (e.g. ``linear.weight``).
            bias: optional float ``[out_features]``.
            alpha: the weight scale. None: 1 (plain signs). ``"tensor"``: ``mean(|W|)`` (XNOR-Net's
                per-tensor scale). ``"row"``: ``mean(|W[n, :]|)`` per output feature. A number or
                a tensor of shape ``[]`` or ``[out_features]``: that scale.
            backend: kernel backend for this layer (None: :func:`get_backend` at call time).
        """
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            got = (tuple(weight.shape) if isinstance(weight, torch.Tensor)
                   else type(weight).__name__)
            raise ValueError(f"BinaryLinear.from_float: expected a 2-D weight tensor "
                             f"[out_features, in_features], got {got}")
        weight = weight.detach()
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, backend=backend)
        w = weight.float()
        if alpha is None:
            scale = torch.ones(out_features)
        elif isinstance(alpha, str):
            if alpha == "tensor":
                scale = w.abs().mean().expand(out_features)
            elif alpha == "row":
                scale = w.abs().mean(dim=1)
            else:
                raise ValueError(f"BinaryLinear.from_float: alpha must be None, 'tensor', 'row', "
                                 f"a number or a tensor, got {alpha!r}")
        else:
            scale = torch.as_tensor(alpha, dtype=torch.float32).detach()
            if scale.dim() == 0:
                scale = scale.expand(out_features)
            if scale.shape != (out_features,):
                raise ValueError(f"BinaryLinear.from_float: alpha has shape {tuple(scale.shape)}, "
                                 f"expected [] or [{out_features}]")
        if bias is not None:
            bias = bias.detach().float()
            if bias.shape != (out_features,):
                raise ValueError(f"BinaryLinear.from_float: bias has shape {tuple(bias.shape)}, "
                                 f"expected [{out_features}]")
            layer.bias.copy_(bias)
        if torch.isnan(scale).any():
            raise ValueError("BinaryLinear.from_float: alpha contains NaN")
        layer.alpha.copy_(scale)
        layer.weight_words.copy_(torch.from_numpy(pack_signs(w).view(np.int64)))
        return layer

    def _prepared(self) -> tuple[PackedWeight, np.ndarray, np.ndarray]:
        """The blocked weight and padded scale/bias, rebuilt when the buffers changed."""
        key = (self.weight_words._version, self.alpha._version, self.bias._version,
               self.weight_words.data_ptr(), self.alpha.data_ptr(), self.bias.data_ptr())
        if self._packed is None or self._packed_key != key:
            words = np.ascontiguousarray(self.weight_words.numpy().view(np.uint64))
            packed = PackedWeight.from_words(words, self.in_features)
            width = packed.col_ones.shape[1]
            scale = np.zeros(width, np.float32)
            bias = np.zeros(width, np.float32)
            scale[: self.out_features] = self.alpha.numpy()
            bias[: self.out_features] = self.bias.numpy()
            self._packed, self._scale, self._bias, self._packed_key = packed, scale, bias, key
        return self._packed, self._scale, self._bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"BinaryLinear: expected input [..., {self.in_features}], got {shape}")
        packed, scale, bias = self._prepared()
        words = pack_signs(x).reshape(-1, packed.words.shape[-1])
        out = _product("BinaryLinear", words, packed, self.in_features, self.backend,
                       batched=False, use_and=False, scale=scale, bias=bias)
        return torch.from_numpy(out.reshape(*x.shape[:-1], self.out_features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
