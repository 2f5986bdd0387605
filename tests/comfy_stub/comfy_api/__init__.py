"""Stand-in for ``comfy_api`` (see tests/comfy_stub/README.md)."""
