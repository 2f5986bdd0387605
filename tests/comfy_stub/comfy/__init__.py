"""Stand-in for ComfyUI's ``comfy`` package (see tests/comfy_stub/README.md)."""
