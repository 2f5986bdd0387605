"""Tensors derived from a layer's weight, kept between calls while the weight is unchanged.

The CPU fast path derives from the shared (unmodulated) weight what every call would otherwise
recompute: its Winograd transform (4x the weight, ~20 ms per 512-channel layer) and the kernel
sums of squares the demodulation needs. :class:`DerivedWeights` keeps them per module, keyed on
what would make them stale, and drops them when the module moves (``.to``, ``.cuda``,
``.half``), so no copy is left behind on the old device or dtype.

A derived tensor is never kept where it must carry a gradient (training differentiates through
the derivation), and one made in inference mode is never reused outside it (an inference tensor
cannot be saved for a backward pass, as in the refinement stages, which differentiate through a
frozen generator).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def derived_key(weight: torch.Tensor) -> tuple | None:
    """What a tensor derived from ``weight`` depends on, or None where it must not be kept (the
    weight needs a gradient). The version counter sees in-place changes (optimiser steps,
    ``load_state_dict``); an inference tensor has none and cannot change outside inference mode,
    so its storage stands for it."""
    if torch.is_grad_enabled() and weight.requires_grad:
        return None
    version = None if weight.is_inference() else weight._version
    return (weight.data_ptr(), version, weight.dtype, weight.device, tuple(weight.shape),
            torch.is_inference_mode_enabled())


class DerivedWeights(nn.Module):
    """Mixin: :meth:`derived` keeps ``build(weight)`` under a name (see the module doc)."""

    _derived: dict | None = None

    def derived(self, name: str, weight: torch.Tensor, build: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        key = derived_key(weight)
        if key is None:
            return build(weight)
        if self._derived is None:
            self._derived = {}
        kept = self._derived.get(name)
        if kept is None or kept[0] != key:
            self._derived.pop(name, None)  # free the old one before building the new one
            kept = self._derived[name] = (key, build(weight.detach()))
        return kept[1]

    def _apply(self, fn, *args, **kwargs):
        self._derived = None
        return super()._apply(fn, *args, **kwargs)


__all__ = ["DerivedWeights", "derived_key"]
