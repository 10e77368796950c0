"""Reading and tampering with model files in tests."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, loaded without pickles."""
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def add_pickled_payload(path: Path, marker: Path) -> None:
    """Rewrite the model at ``path`` with an extra object array whose unpickling creates ``marker``."""
    arrays = read_arrays(path)
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array)
        with archive.open("evil.npy", "w") as member:
            np.lib.format.write_array(member, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
