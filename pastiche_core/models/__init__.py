"""Models: StyleGAN2 (intrinsic path), DualStyleGAN (extrinsic path), pSp encoders, the ICP
style sampler and the IR-SE50 identity network. Key names match the official checkpoints."""
from .dualstylegan import DEFAULT_INTERP_WEIGHTS, AdaResBlock, DualStyleGAN, layer_weights
from .irse import Backbone, arcface_input
from .psp import GradualStyleEncoder, PSPEncoder
from .sampler import StyleSampler
from .stylegan2 import Generator

__all__ = ["AdaResBlock", "Backbone", "DEFAULT_INTERP_WEIGHTS", "DualStyleGAN", "Generator", "GradualStyleEncoder",
           "PSPEncoder", "StyleSampler", "arcface_input", "layer_weights"]
