"""Reference tooling: deterministic fixture weights and the replay of official fixture cases.

``python -m pastiche_core.reference replay CASE.npz --out OUT.npz [--weights fixture|CHECKPOINT]``
"""
from .replay import fixture_encoder, fixture_model, replay_case

__all__ = ["fixture_encoder", "fixture_model", "replay_case"]
