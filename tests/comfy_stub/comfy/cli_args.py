"""Stand-in for ``comfy.cli_args``: ``args`` with the defaults of the flags the pack reads
(ComfyUI parses no command line when imported as a library, so these are its defaults too).
Tests set attributes on it to play a launch flag."""
from types import SimpleNamespace

args = SimpleNamespace(cpu=False, force_fp16=False, force_fp32=False, fp32_unet=False, fp64_unet=False,
                       bf16_unet=False, fp16_unet=False, fp8_e4m3fn_unet=False, fp8_e5m2_unet=False,
                       fp8_e8m0fnu_unet=False, lowvram=False, novram=False)
