"""The stages' DVCLive loggers: atomic summaries, nothing lost on an error, staged outputs written together."""

import json

import pytest

from mnist_classification.reports.live import StageLive, staged_live


def test_epochs_are_logged_as_dvclive_tsv_and_summary(tmp_path):
    folder = tmp_path / "dvclive" / "train"
    with StageLive(folder) as live:
        for epoch, accuracy in ((1, 0.5), (2, 0.75)):
            live.step = epoch
            live.log_metric("val/accuracy", accuracy)
            live.next_step()
    assert (folder / "plots" / "metrics" / "val" / "accuracy.tsv").read_text() == "step\taccuracy\n1\t0.5\n2\t0.75\n"
    assert json.loads((folder / "metrics.json").read_text()) == {"step": 2, "val": {"accuracy": 0.75}}
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "plots"]  # no dvc.yaml, no report


def test_an_error_puts_the_previous_run_back(tmp_path):
    folder = tmp_path / "live"
    with StageLive(folder) as live:
        live.step = 1
        live.log_metric("loss", 1.0)
        live.next_step()
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(KeyboardInterrupt):
        with StageLive(folder) as live:
            live.step = 1
            live.log_metric("loss", 9.0)
            live.log_metric("other", 9.0)
            live.next_step()
            raise KeyboardInterrupt
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_staged_outputs_appear_together_or_not_at_all(tmp_path):
    metrics, plots = tmp_path / "metrics" / "eval.json", tmp_path / "dvclive" / "evaluate" / "plots"
    with pytest.raises(RuntimeError):
        with staged_live(plots, metrics) as live:
            live.summary["accuracy"] = 0.5
            live.log_sklearn_plot("confusion_matrix", ["a", "b"], ["a", "a"])
            raise RuntimeError("the last plot failed")
    assert not metrics.exists() and not plots.exists()
    with staged_live(plots, metrics) as live:
        live.summary["accuracy"] = 0.5
        live.log_sklearn_plot("confusion_matrix", ["a", "b"], ["a", "a"])
    assert json.loads(metrics.read_text()) == {"accuracy": 0.5}
    assert json.loads((plots / "sklearn" / "confusion_matrix.json").read_text()) == [
        {"actual": "a", "predicted": "a"}, {"actual": "b", "predicted": "a"}]
