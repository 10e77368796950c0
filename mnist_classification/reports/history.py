"""The training history file, plots/history.csv: one row per epoch, written by train, read by evaluate."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from mnist_classification.infra.atomic import write_csv
from mnist_classification.infra.errors import PipelineError

#: Columns in file order: the epoch (1-based), mean loss (nats) and accuracy (0..1) on the
#: training and validation splits, and the learning rate at the epoch's last step.
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


def write_history(path: str | os.PathLike, rows: list[dict]) -> None:
    """Atomically write ``rows`` (dicts keyed by :data:`HISTORY_COLUMNS`), numbers to 6 significant digits."""
    write_csv(path, HISTORY_COLUMNS,
              ([row["epoch"]] + [f"{row[c]:.6g}" for c in HISTORY_COLUMNS[1:]] for row in rows))


def read_history(path: str | os.PathLike) -> list[dict]:
    """Read the train stage's ``plots/history.csv``: one dict per epoch.

    ``epoch`` is an int, every other column a float (NaN and inf are kept so a
    diverged run still plots). Raises PipelineError if the file is missing,
    unreadable, lacks a required column, has no rows or holds a non-number.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [column for column in HISTORY_COLUMNS if column not in header]
            if missing:
                raise PipelineError(
                    f"{path} is not a training history: missing column(s) {', '.join(missing)} "
                    f"(expected header {','.join(HISTORY_COLUMNS)}); re-run the train stage"
                )
            rows = [_history_row(path, line, record) for line, record in enumerate(reader, start=2)]
    except FileNotFoundError:
        raise PipelineError(f"training history {path} not found; run the train stage first "
                            f"(`dvc repro train`)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PipelineError(f"cannot read training history {path}: {exc}") from None
    if not rows:
        raise PipelineError(f"training history {path} has a header but no epochs; re-run the train stage")
    return rows


def _history_row(path: Path, line: int, record: dict) -> dict:
    if None in record or any(record[column] is None for column in HISTORY_COLUMNS):
        raise PipelineError(f"{path} line {line}: wrong number of fields")
    row: dict = {}
    for column, text in record.items():
        try:
            row[column] = int(text) if column == "epoch" else float(text)
        except (TypeError, ValueError):
            raise PipelineError(f"{path} line {line}: {column} is {text!r}, not a number") from None
    return row
