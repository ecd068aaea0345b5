"""Small shared helpers: atomic file writes, device selection, seeding."""

from ld3.utils.io import atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from ld3.utils.runtime import resolve_device, seed_everything

__all__ = [
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "sha256_file",
    "resolve_device",
    "seed_everything",
]
