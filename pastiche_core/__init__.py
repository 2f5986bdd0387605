"""Pastiche core: DualStyleGAN exemplar-based portrait style transfer in plain PyTorch.

Never imports ComfyUI. Device and dtype always come from the caller.
"""
__version__ = "0.1.0"
