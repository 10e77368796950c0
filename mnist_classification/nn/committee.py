"""A committee of networks: it predicts the average of its members' class probabilities, calibrated by its own
temperature.

The members must agree on what goes in and what comes out - the input shape,
the class names (in order) and the normalisation (mean, std) - so that one
standardised batch feeds them all and their probabilities can be averaged
column by column. The ensemble stage and ``predict`` both average through
:func:`average_probabilities` and apply the committee's temperature T through
:func:`scale_probabilities`: softmax(log(p_avg) / T), temperature scaling with
log(p_avg) in place of logits (they differ by a per-row constant, which softmax
ignores). T = 1 leaves the average as it is.

A committee file (JSON, written by the ensemble stage, read by ``predict --model``)
names the member model files and holds T:

    {"format": "mnist-classification committee",
     "members": [{"path": "../members/seed-0/models/model.npz", "md5": "<32 hex digits>"}, ...],
     "temperature": 0.87}

Member paths are relative to the committee file's folder; the md5 of each member
file, recorded when the committee was made, detects a member changed since.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mnist_classification.infra import atomic
from mnist_classification.infra.errors import PipelineError
from mnist_classification.nn.losses import softmax
from mnist_classification.nn.network import TEMPERATURE_EXPECTED, Network, load_network, valid_temperature

#: Probabilities are raised to at least this before their log is taken: float32's smallest normal number
#: (1.2e-38; its log is -87.3). See :func:`log_probabilities`.
PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)
COMMITTEE_FORMAT = "mnist-classification committee"
#: A committee file larger than this (bytes) is refused unread.
MAX_COMMITTEE_FILE_BYTES = 1 << 20
_COMMITTEE_EXPECTED = (f'expected a JSON object {{"format": "{COMMITTEE_FORMAT}", "members": [{{"path": ..., '
                       '"md5": ...}, ...], "temperature": T}, as the ensemble stage writes it '
                       "(dvc repro committee/dvc.yaml)")


def average_probabilities(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """The arithmetic mean, float32 (N, K), of the members' class probabilities, each (N, K)."""
    if not probabilities:
        raise ValueError("no probabilities to average")
    total = np.array(probabilities[0], dtype=np.float32)  # a copy: the members' arrays stay untouched
    for member in probabilities[1:]:
        if member.shape != total.shape:
            raise ValueError(f"members' probabilities have shapes {total.shape} and {member.shape}")
        total += member
    total /= np.float32(len(probabilities))
    return total


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """log(p), float64 (N, K), of probabilities (N, K), each first raised to at least :data:`PROBABILITY_FLOOR`.

    An average is exactly 0 where every member's float32 softmax underflowed; its log, -inf, would make
    the cross-entropy infinite at every temperature (when it is the labelled class) and the fit
    meaningless. The floor changes only probabilities below float32's normal range, none of which
    float32 holds to full precision anyway; float64 keeps log(p) / T exact for T down to 0.05 (-1746).
    """
    return np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR))


def scale_probabilities(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T) (see :func:`log_probabilities`), float32 (N, K), for probabilities p (N, K).

    T < 1 sharpens the probabilities, T > 1 softens them; the predicted class never changes.
    T = 1 returns ``probabilities`` themselves.
    """
    if temperature == 1.0:
        return probabilities
    return softmax(log_probabilities(probabilities) / temperature).astype(np.float32)


class Committee:
    """Networks (loaded from ``paths``, named in errors) that predict together, with the committee's own
    ``temperature`` (1.0: the plain average of the members' probabilities).

    Exposes what :class:`Network` users read - ``input_shape``, ``classes``, ``mean``, ``std``,
    ``predict_proba`` - so it can stand in for a single network.
    """

    def __init__(self, members: Sequence[Network], paths: Sequence[str | Path], temperature: float = 1.0) -> None:
        if not members or len(members) != len(paths):
            raise ValueError(f"{len(members)} members for {len(paths)} paths")
        first = members[0]
        for member, path in zip(members[1:], paths[1:]):
            for what, mine, theirs in (("input shapes", first.input_shape, member.input_shape),
                                       ("classes", first.classes, member.classes),
                                       ("normalisation (mean, std)", (first.mean, first.std),
                                        (member.mean, member.std))):
                if mine != theirs:
                    raise PipelineError(f"model files {paths[0]} and {path} cannot form a committee: their "
                                        f"{what} differ ({mine} vs {theirs}); the members must be trained on "
                                        "the same data")
        self.members = list(members)
        self.input_shape, self.classes = first.input_shape, first.classes
        self.mean, self.std = first.mean, first.std
        self.temperature = float(temperature)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """The committee's class probabilities (N, K) for standardised inputs ``x`` (N, *input_shape): the
        average of its members' (each calibrated by its own temperature), scaled by the committee's."""
        average = average_probabilities([member.predict_proba(x) for member in self.members])
        return scale_probabilities(average, self.temperature)


def load_committee(paths: Sequence[str | Path]) -> Committee:
    """Load every model file of ``paths`` and check that they can form a committee."""
    return Committee([load_network(path) for path in paths], paths)


def file_md5(path: str | Path) -> str:
    """The MD5 of a file's bytes (32 hex digits), as DVC records it."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_committee_file(path: str | Path, members: Sequence[str | Path], temperature: float) -> None:
    """Atomically write the committee file ``path`` naming the model files ``members`` (paths relative to
    ``path``'s folder, with their md5) and the committee's ``temperature``."""
    path = Path(path)
    entries = [{"path": Path(os.path.relpath(member, path.parent)).as_posix(), "md5": file_md5(member)}
               for member in members]
    atomic.write_json(path, {"format": COMMITTEE_FORMAT, "members": entries, "temperature": temperature})


def _committee_document(path: Path) -> dict:
    """The committee file's JSON, checked for its keys and their types (not yet the member files)."""
    try:
        if path.stat().st_size > MAX_COMMITTEE_FILE_BYTES:
            raise PipelineError(f"committee file {path} is {path.stat().st_size} bytes, more than "
                                f"{MAX_COMMITTEE_FILE_BYTES}; {_COMMITTEE_EXPECTED}")
        document = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"committee file {path} not found; make it with `dvc repro committee/dvc.yaml` "
                            "or pass model files with --model") from None
    except OSError as exc:
        raise PipelineError(f"committee file {path} cannot be read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PipelineError(f"committee file {path} is not JSON ({type(exc).__name__}); "
                            f"{_COMMITTEE_EXPECTED}") from None
    if not isinstance(document, dict) or document.get("format") != COMMITTEE_FORMAT:
        got = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise PipelineError(f"committee file {path} is not a committee file (format {got!r:.60}); "
                            f"{_COMMITTEE_EXPECTED}")
    problem = None
    unknown = sorted(set(document) - {"format", "members", "temperature"})
    members = document.get("members")
    if unknown:
        problem = f"unknown key {unknown[0]!r:.60}"
    elif not isinstance(members, list) or not members:
        problem = "members is not a non-empty list"
    elif not all(isinstance(member, dict) and set(member) == {"path", "md5"} and isinstance(member["path"], str)
                 and member["path"] and isinstance(member["md5"], str)
                 and re.fullmatch(r"[0-9a-f]{32}", member["md5"]) for member in members):
        problem = 'a member is not {"path": non-empty string, "md5": 32 lowercase hex digits}'
    elif not valid_temperature(document.get("temperature")):
        problem = f"temperature is {document.get('temperature')!r:.60}; expected {TEMPERATURE_EXPECTED}"
    if problem is not None:
        raise PipelineError(f"committee file {path}: {problem}; {_COMMITTEE_EXPECTED}")
    return document


def read_committee_file(path: str | Path) -> tuple[list[Path], float]:
    """(member model files, resolved against ``path``'s folder; the committee's temperature) of a committee
    file, once every member file is found with the md5 the file records (else a one-line PipelineError)."""
    path = Path(path)
    document = _committee_document(path)
    members = []
    for entry in document["members"]:
        member = path.parent / entry["path"]
        named = f"committee file {path} names member {entry['path']!r:.200} (relative to {path.parent})"
        try:
            md5 = file_md5(member)
        except FileNotFoundError:
            raise PipelineError(f"{named}, which is not found; fetch or train the members (dvc pull / "
                                "dvc repro committee/dvc.yaml)") from None
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            raise PipelineError(f"{named}, which cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
        if md5 != entry["md5"]:
            raise PipelineError(f"{named}, which has changed since the committee was made (md5 {md5}, the file "
                                f"records {entry['md5']}); rerun the ensemble (dvc repro committee/dvc.yaml)")
        members.append(member)
    return members, float(document["temperature"])

