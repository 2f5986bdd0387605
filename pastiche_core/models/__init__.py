"""Generator models: StyleGAN2 (intrinsic path) and DualStyleGAN (with the extrinsic path)."""
from .dualstylegan import DEFAULT_INTERP_WEIGHTS, AdaResBlock, DualStyleGAN, layer_weights
from .stylegan2 import Generator

__all__ = ["AdaResBlock", "DEFAULT_INTERP_WEIGHTS", "DualStyleGAN", "Generator", "layer_weights"]
