"""Train/validation split by a stable hash of each document's identity.

A document goes to validation when `split_fraction(identity) < val_fraction`, where the
fraction is the first 8 bytes of sha256(identity) read as a big-endian integer / 2**64. The
validation set therefore does not move when documents are added or removed. With at least two
documents and `val_fraction > 0`, each split gets at least one document: if none hashed into
validation, the document with the smallest fraction moves there; if all did, the one with the
largest moves to train. A single document always goes to train.
"""

from __future__ import annotations

import hashlib

import numpy as np


def split_fraction(identity: str) -> float:
    """Uniform value in [0, 1) derived from sha256 of the identity."""
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(fractions: np.ndarray, val_fraction: float) -> np.ndarray:
    """(n,) float64 fractions → (n,) bool, True for validation, by the module's rule."""
    is_val = fractions < val_fraction
    if val_fraction > 0 and len(fractions) >= 2:
        if not is_val.any():
            is_val[np.argmin(fractions)] = True
        elif is_val.all():
            is_val[np.argmax(fractions)] = False
    elif len(fractions) == 1:
        is_val[:] = False
    return is_val
