"""Ensemble stage: the committee's members on data/prepared/test.npz -> the committee's metrics and plots.

Member ``seed-N``, one per seed of ``committee.seeds`` in committee/params.yaml, is the folder
committee/members/seed-N/ that ``stages/train.py --seed N --outputs committee/members/seed-N``
wrote (its models/model.npz and metrics/train.json); folders of seeds no longer listed are ignored.
The committee's class probabilities are the average of its members' (each calibrated by its own
temperature, as the member reports them;
:func:`mnist_classification.nn.committee.average_probabilities`, as ``predict --model A --model B``
computes them). Written all together, through DVCLive like the evaluate stage's:

- committee/metrics/eval.json: the committee's accuracy, loss, precision/recall/F1 and ``ece``, and
  ``ece_uncalibrated``, ``loss_uncalibrated`` of the average of the members' softmax(logits); under
  ``members``, each member's test accuracy, loss, ece and temperature with its validation accuracy
  and train time from its train.json; ``members_train_seconds``, the members' train times added up;
- committee/dvclive/evaluate/plots/: the committee's confusion data (sklearn/confusion_matrix.json),
  reliability bins (custom/reliability.json), images/confusion_matrix.png, images/reliability.png,
  images/misclassified.png, and custom/members.json, the member-vs-committee table (one record per
  member, then the committee's).
"""

import json
import sys
from pathlib import Path

import numpy as np

from mnist_classification.data.preprocessing import load_prepared, standardise
from mnist_classification.infra.errors import PipelineError, run_cli
from mnist_classification.infra.params import load_params
from mnist_classification.nn.committee import average_probabilities, load_committee
from mnist_classification.nn.losses import softmax
from mnist_classification.reports.evaluation import (
    check_finite,
    check_test_set,
    evaluation_live,
    evaluation_report,
)

PARAMS = Path("committee/params.yaml")
MEMBERS = Path("committee/members")
MEMBER_MODEL = Path("models/model.npz")
MEMBER_METRICS = Path("metrics/train.json")
TEST = Path("data/prepared/test.npz")
METRICS = Path("committee/metrics/eval.json")
PLOTS = Path("committee/dvclive/evaluate/plots")
#: The table's columns: a member's test metrics (TEST_KEYS), its temperature, and from its train.json (TRAIN_KEYS).
TEST_KEYS = ("accuracy", "loss", "ece")
TRAIN_KEYS = ("val_accuracy", "train_seconds")
COLUMNS = ("member", *TEST_KEYS, "temperature", *TRAIN_KEYS)


def train_metrics(path: Path) -> dict:
    """``TRAIN_KEYS`` of a member's train.json."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        return {key: metrics[key] for key in TRAIN_KEYS}
    except FileNotFoundError:
        raise PipelineError(f"{path} not found; train the member first (dvc repro committee/dvc.yaml)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path} is not a train stage's metrics file ({exc!r}); retrain the member "
                            "(dvc repro committee/dvc.yaml)") from None


def markdown_table(rows: list[dict]) -> str:
    """The member-vs-committee table (one dict per row) in Markdown."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row.get(column, "")) for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    params = load_params(PARAMS)
    names = [f"seed-{seed}" for seed in params["committee"]["seeds"]]
    models = [MEMBERS / name / MEMBER_MODEL for name in names]
    trained = [train_metrics(MEMBERS / name / MEMBER_METRICS) for name in names]
    committee = load_committee(models)
    images, labels = load_prepared(TEST)
    check_test_set(images, labels, committee.input_shape, committee.classes, models[0], TEST)

    x = standardise(images, committee.mean, committee.std)
    calibrated, uncalibrated, rows = [], [], []
    for name, model, member, train in zip(names, models, committee.members, trained):
        with np.errstate(over="ignore", invalid="ignore"):
            logits = member.predict_logits(x)
            calibrated.append(member.probabilities(logits))
        check_finite(calibrated[-1], model, TEST)
        uncalibrated.append(softmax(logits))
        report = evaluation_report(calibrated[-1], labels, committee.classes)[0]
        rows.append({"member": name, **{key: report[key] for key in TEST_KEYS}, "temperature": member.temperature,
                     **train})

    with evaluation_live(PLOTS, METRICS, images, labels, average_probabilities(calibrated),
                         average_probabilities(uncalibrated), committee.classes, params["evaluate"]["gallery_size"],
                         f"Committee of {len(names)}: test-set reliability") as (live, report):
        train_seconds = round(sum(row["train_seconds"] for row in rows), 2)
        live.summary["members"] = {row["member"]: {key: value for key, value in row.items() if key != "member"}
                                   for row in rows}
        live.summary["members_train_seconds"] = train_seconds
        rows.append({"member": "committee", **{key: report[key] for key in TEST_KEYS}, "train_seconds": train_seconds})
        live.log_plot("members", rows, x="accuracy", y="member", template="bar_horizontal")
    print(markdown_table(rows), file=sys.stderr)
    print(f"ensemble: committee of {len(names)}: test accuracy={report['accuracy']:.4f} "
          f"loss={report['loss']:.4f} on {report['samples']} images; wrote {METRICS}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main, "ensemble")
