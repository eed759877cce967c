"""Generators and their files: the networks, the self-describing model file, the store of named models,
the one uint8 frame <-> batch conversion and the x2y naming rule. `load_generator` is the one reader of
model files: everything that runs a generator gets it there."""

from vidcycle.models.store import load_generator

__all__ = ["load_generator"]
