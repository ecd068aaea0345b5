"""Small shared helpers: atomic file writes, device selection, moving a model, seeding, plain/JSON-safe values."""

from ld3.utils.io import atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from ld3.utils.plain import json_safe, to_plain
from ld3.utils.runtime import move_model, resolve_device, seed_everything

__all__ = [
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "sha256_file",
    "json_safe",
    "move_model",
    "resolve_device",
    "to_plain",
    "seed_everything",
]
