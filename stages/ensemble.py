"""Ensemble stage: the committee's members -> its temperature (data/prepared/val.npz), its metrics and plots
(data/prepared/test.npz) and its committee file.

Member ``seed-N``, one per seed of ``committee.seeds`` in committee/params.yaml, is the folder
committee/members/seed-N/ that ``stages/train.py --seed N --outputs committee/members/seed-N``
wrote (its models/model.npz and metrics/train.json); member ``elastic-seed-N``, one per seed of
``committee.elastic_seeds``, the folder committee/members/elastic-seed-N/ of committee/elastic.yaml's
recipe; folders of seeds no longer listed are ignored.
The committee's class probabilities are the average p_avg of its members' (each calibrated by its own
temperature, as the member reports them), scaled by the committee's own temperature T:
softmax(log(p_avg) / T) (:class:`mnist_classification.nn.committee.Committee`, as ``predict`` computes
them). T is fitted on the validation split the members were calibrated on and kept only if it helps
there (:func:`mnist_classification.reports.committee_calibration.calibrate_committee`). Written:

- committee/metrics/eval.json, through DVCLive like the evaluate stage's: the committee's accuracy, loss,
  precision/recall/F1 and ``ece``; ``val_accuracy``, its accuracy on the validation split (where a
  committee's recipe is chosen); ``temperature``, the committee's T, and under ``calibration`` its fit
  on the validation split (as a member's train.json records its own); ``ece_average``, ``loss_average``
  of p_avg (T = 1); ``ece_uncalibrated``, ``loss_uncalibrated`` of the average of the members'
  softmax(logits) (every temperature 1); under ``members``, each member's test accuracy, loss, ece and
  temperature with its validation accuracy and train time from its train.json;
  ``members_train_seconds``, the members' train times added up;
- committee/dvclive/evaluate/plots/: the committee's confusion data (sklearn/confusion_matrix.json),
  reliability bins (custom/reliability.json), images/confusion_matrix.png, images/reliability.png,
  images/misclassified.png, and custom/members.json, the member-vs-committee table (one record per
  member, then the committee's);
- committee/models/committee.json, the committee file ``predict --model`` reads: the member model files
  (relative to it, with their md5) and T (:func:`mnist_classification.nn.committee.write_committee_file`),
  written last, once the metrics and plots are.
"""

import json
import sys
from pathlib import Path

import numpy as np

from mnist_classification.data.preprocessing import load_prepared, standardise
from mnist_classification.infra.errors import PipelineError, run_cli
from mnist_classification.infra.params import load_params
from mnist_classification.nn.committee import (
    average_probabilities,
    load_committee,
    scale_probabilities,
    write_committee_file,
)
from mnist_classification.nn.losses import softmax
from mnist_classification.nn.network import Network
from mnist_classification.reports.committee_calibration import calibrate_committee
from mnist_classification.reports.evaluation import (
    check_finite,
    check_test_set,
    ece_and_loss,
    evaluation_live,
    evaluation_report,
)

PARAMS = Path("committee/params.yaml")
MEMBERS = Path("committee/members")
MEMBER_MODEL = Path("models/model.npz")
MEMBER_METRICS = Path("metrics/train.json")
TEST = Path("data/prepared/test.npz")
VAL = Path("data/prepared/val.npz")
METRICS = Path("committee/metrics/eval.json")
COMMITTEE = Path("committee/models/committee.json")
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


def member_names(section: dict) -> list[str]:
    """The members' folder names under committee/members, in the committee's order: ``seed-N`` for each of
    the ``committee`` section's ``seeds``, then ``elastic-seed-N`` for each of its ``elastic_seeds``."""
    return [f"seed-{seed}" for seed in section["seeds"]] + [f"elastic-seed-{seed}" for seed in section["elastic_seeds"]]


def markdown_table(rows: list[dict]) -> str:
    """The member-vs-committee table (one dict per row) in Markdown."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row.get(column, "")) for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def member_probabilities(members: list[Network], models: list[Path], split: Path,
                         x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each member's calibrated and uncalibrated (softmax(logits)) probabilities, each (N, K), for the
    standardised images ``x`` (N, H, W) of ``split``; a member giving NaN is refused naming its file."""
    calibrated, uncalibrated = [], []
    for model, member in zip(models, members):
        with np.errstate(over="ignore", invalid="ignore"):
            logits = member.predict_logits(x)
            calibrated.append(member.probabilities(logits))
        check_finite(calibrated[-1], model, split)
        uncalibrated.append(softmax(logits))
    return calibrated, uncalibrated


def main() -> None:
    params = load_params(PARAMS)
    names = member_names(params["committee"])
    models = [MEMBERS / name / MEMBER_MODEL for name in names]
    trained = [train_metrics(MEMBERS / name / MEMBER_METRICS) for name in names]
    committee = load_committee(models)
    (images, labels), (val_images, val_labels) = load_prepared(TEST), load_prepared(VAL)
    for split, split_images, split_labels in ((TEST, images, labels), (VAL, val_images, val_labels)):
        check_test_set(split_images, split_labels, committee.input_shape, committee.classes, models[0], split)

    val_x, x = (standardise(split, committee.mean, committee.std) for split in (val_images, images))
    val_calibrated = member_probabilities(committee.members, models, VAL, val_x)[0]
    scaling = calibrate_committee(val_calibrated, val_labels)
    committee.temperature = scaling.temperature
    val_accuracy = round(float(np.mean(average_probabilities(val_calibrated).argmax(axis=1) == val_labels)), 6)
    calibrated, uncalibrated = member_probabilities(committee.members, models, TEST, x)
    average = average_probabilities(calibrated)
    rows = []
    for name, member, train, probabilities in zip(names, committee.members, trained, calibrated):
        member_report = evaluation_report(probabilities, labels, committee.classes)[0]
        rows.append({"member": name, **{key: member_report[key] for key in TEST_KEYS},
                     "temperature": member.temperature, **train})

    with evaluation_live(PLOTS, METRICS, images, labels, scale_probabilities(average, committee.temperature),
                         average_probabilities(uncalibrated), committee.classes, params["evaluate"]["gallery_size"],
                         f"Committee of {len(names)}: test-set reliability, T = {committee.temperature:.3g}"
                         ) as (live, report):
        train_seconds = round(sum(row["train_seconds"] for row in rows), 2)
        live.summary["val_accuracy"] = val_accuracy
        live.summary["temperature"] = committee.temperature
        live.summary["calibration"] = scaling.summary()
        live.summary["ece_average"], live.summary["loss_average"] = ece_and_loss(average, labels)
        live.summary["members"] = {row["member"]: {key: value for key, value in row.items() if key != "member"}
                                   for row in rows}
        live.summary["members_train_seconds"] = train_seconds
        rows.append({"member": "committee", **{key: report[key] for key in TEST_KEYS},
                     "temperature": committee.temperature, "val_accuracy": val_accuracy,
                     "train_seconds": train_seconds})
        live.log_plot("members", rows, x="accuracy", y="member", template="bar_horizontal")
    write_committee_file(COMMITTEE, models, committee.temperature)
    print(markdown_table(rows), file=sys.stderr)
    print(f"ensemble: committee of {len(names)}: validation accuracy {val_accuracy:.4f}, temperature "
          f"{committee.temperature:g} (validation loss {scaling.nll_before:.4f} -> {scaling.nll_after:.4f} at "
          f"T = {scaling.fitted:g}); test accuracy="
          f"{report['accuracy']:.4f} loss={report['loss']:.4f} on {report['samples']} images; wrote {METRICS}, "
          f"{COMMITTEE}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main, "ensemble")
