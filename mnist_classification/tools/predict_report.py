"""What ``predict`` prints: one entry per input, as text lines or one JSON document, written as it goes.

Each input becomes one entry (a dict), in the order the inputs were given:

- an image: ``{"file", "predicted", "probability", "top3": [{"class", "probability"}, ...], "preprocessed"}``
  (``preprocessed``: the ``--show`` file, or null);
- a batch file (.npy / IDX): ``{"file", "output", "count", "predicted_counts": {class: count}}``;
- an input that could not be read or holds no digit: ``{"file", "error"}``, the error naming the file.

:class:`TextReport` prints a line per result on stdout and a line per error on
stderr; :class:`JsonReport` streams ``{"model": ..., "inputs": [entries...],
"classified": n, "errors": m}`` to stdout (``"models": [...]`` instead of
``"model"`` for a committee of several), starting with the first entry (a run
stopped by a model error before any prints nothing). Neither keeps the entries,
so the memory used does not grow with the number of inputs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class Prediction:
    """One classified image: its class, probability and the top (class, probability) pairs, most probable first."""

    predicted: str
    probability: float
    top: list[tuple[str, float]]


def image_entry(path: Path, pred: Prediction, preview: Path | None) -> dict:
    return {"file": str(path), "predicted": pred.predicted, "probability": round(pred.probability, 6),
            "top3": [{"class": name, "probability": round(p, 6)} for name, p in pred.top],
            "preprocessed": None if preview is None else str(preview)}


def batch_entry(path: Path, output: Path, counts: dict[str, int]) -> dict:
    return {"file": str(path), "output": str(output), "count": sum(counts.values()),
            "predicted_counts": {name: counts[name] for name in sorted(counts)}}


def error_entry(path: Path, message: str) -> dict:
    return {"file": str(path), "error": message}


def csv_row(index: int, pred: Prediction) -> tuple:
    """(index, predicted, probability, top3) with top3 as ``class:prob`` pairs separated by spaces."""
    return (index, pred.predicted, f"{pred.probability:.6f}", " ".join(f"{name}:{p:.6f}" for name, p in pred.top))


def _percent(p: float) -> str:
    return f"{100 * p:.1f}%"


def text_line(entry: dict) -> str:
    """The text form of a result entry (image or batch)."""
    if "output" in entry:
        histogram = " ".join(f"{name}:{n}" for name, n in entry["predicted_counts"].items())
        return f"{entry['file']}: {entry['count']} images -> {entry['output']} (predicted counts {histogram})"
    top = ", ".join(f"{t['class']} {_percent(t['probability'])}" for t in entry["top3"])
    line = f"{entry['file']}: {entry['predicted']} ({_percent(entry['probability'])})  top {len(entry['top3'])}: {top}"
    if entry["preprocessed"] is not None:
        line += f"  [model input: {entry['preprocessed']}]"
    return line


class Report:
    """Counts the entries written; subclasses say how each is written."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = sys.stdout if out is None else out
        self.err = sys.stderr if err is None else err
        self.classified = 0
        self.errors = 0

    def add(self, entry: dict) -> None:
        if "error" in entry:
            self.errors += 1
        else:
            self.classified += 1
        self._write(entry)

    def _write(self, entry: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the output (after the last entry)."""


class TextReport(Report):
    """A line per result on stdout; ``predict: error: <message>`` per failed input on stderr."""

    def _write(self, entry: dict) -> None:
        if "error" in entry:
            print(f"predict: error: {entry['error']}", file=self.err, flush=True)
        else:
            print(text_line(entry), file=self.out, flush=True)

    def close(self) -> None:
        if self.errors:
            total = self.errors + self.classified
            print(f"predict: {self.errors} of {total} inputs not classified", file=self.err, flush=True)


class JsonReport(Report):
    """``{"model": ..., "inputs": [...], "classified": n, "errors": m}`` on stdout, one entry per line;
    ``"models": [...]``, the committee's files in order, instead of ``"model"`` when there are several."""

    def __init__(self, models: Sequence[Path], out: TextIO | None = None, err: TextIO | None = None) -> None:
        super().__init__(out, err)
        names = [str(model) for model in models]
        used = f'"model": {json.dumps(names[0])}' if len(names) == 1 else f'"models": {json.dumps(names)}'
        self.head = "{" + used + ', "inputs": ['  # written with the first entry

    def _write(self, entry: dict) -> None:
        self.out.write((self.head + "\n  " if self.classified + self.errors == 1 else ",\n  ") + json.dumps(entry))
        self.out.flush()

    def close(self) -> None:
        start = "\n" if self.classified + self.errors else self.head
        self.out.write(start + f'], "classified": {self.classified}, "errors": {self.errors}}}\n')
        self.out.flush()
