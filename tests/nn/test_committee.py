"""A committee averages its members' probabilities, scales them by its temperature, refuses members that do
not agree, and reads back the committee file it wrote or refuses a damaged one in one line."""

import json
import os

import numpy as np
import pytest

from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.params import validate
from mnist_classification.nn.committee import (
    MAX_COMMITTEE_FILE_BYTES,
    PROBABILITY_FLOOR,
    Committee,
    average_probabilities,
    file_md5,
    load_committee,
    log_probabilities,
    read_committee_file,
    scale_probabilities,
    write_committee_file,
)
from mnist_classification.nn.network import build_network

CLASSES = [str(i) for i in range(10)]


def _mlp(seed=0, shape=(28, 28), classes=CLASSES, mean=0.13, std=0.31):
    train = validate({"train": {"hidden": [16], "seed": seed}})["train"]
    return build_network(train, shape, classes, mean, std)


def test_average_by_hand():
    a = np.array([[0.2, 0.8, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    b = np.array([[0.6, 0.4, 0.0], [0.0, 0.5, 0.5]], dtype=np.float32)
    c = np.array([[0.1, 0.3, 0.6], [0.0, 1.0, 0.0]], dtype=np.float32)
    before = a.copy()
    two = average_probabilities([a, b])
    np.testing.assert_array_equal(a, before)  # the members are not modified
    assert two.dtype == np.float32
    np.testing.assert_allclose(two, [[0.4, 0.6, 0.0], [0.5, 0.25, 0.25]], rtol=0, atol=1e-7)
    np.testing.assert_allclose(average_probabilities([a, b, c]), [[0.3, 0.5, 0.2], [1 / 3, 0.5, 1 / 6]],
                               rtol=0, atol=1e-7)


def test_one_member_is_its_own_average():
    p = np.random.default_rng(0).dirichlet(np.ones(10), 50).astype(np.float32)
    average = average_probabilities([p])
    np.testing.assert_array_equal(average, p)
    assert average is not p


def test_average_refuses_nothing_and_mismatched_shapes():
    with pytest.raises(ValueError, match="no probabilities"):
        average_probabilities([])
    with pytest.raises(ValueError, match="shapes"):
        average_probabilities([np.zeros((2, 10), np.float32), np.zeros((3, 10), np.float32)])


def test_committee_predicts_the_mean_of_its_members(tmp_path):
    members = [_mlp(seed) for seed in (0, 1, 2)]
    paths = [tmp_path / f"m{seed}.npz" for seed in (0, 1, 2)]
    for member, path in zip(members, paths):
        member.save(path)
    committee = load_committee(paths)
    x = np.random.default_rng(1).normal(size=(64, 28, 28)).astype(np.float32)
    singles = [member.predict_proba(x).astype(np.float64) for member in members]
    assert not np.allclose(singles[0], singles[1])  # different seeds, different members
    np.testing.assert_allclose(committee.predict_proba(x), np.mean(singles, axis=0), rtol=0, atol=1e-6)
    assert (committee.input_shape, committee.classes, committee.mean, committee.std) == ((28, 28), CLASSES,
                                                                                         members[0].mean,
                                                                                         members[0].std)


@pytest.mark.parametrize("other,what", [
    (_mlp(1, shape=(14, 14)), "input shapes differ ((28, 28) vs (14, 14))"),
    (_mlp(1, classes=list("abcdefghij")), "classes differ"),
    (_mlp(1, mean=0.2), "normalisation (mean, std) differ"),
    (_mlp(1, std=0.5), "normalisation (mean, std) differ"),
])
def test_members_that_disagree_are_refused_naming_both_files(other, what):
    with pytest.raises(PipelineError) as error:
        Committee([_mlp(0), _mlp(2), other], ["a.npz", "b.npz", "odd.npz"])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("model files a.npz and odd.npz cannot form a committee: their ")
    assert what in message


def test_scale_probabilities_by_hand():
    p = np.array([[0.9, 0.1], [0.5, 0.5]], dtype=np.float32)
    assert scale_probabilities(p, 1.0) is p  # T = 1: the average as it is
    # T = 1/2 squares and renormalises: 0.81 / 0.82, 0.01 / 0.82; T = 2 takes square roots: 3 / 4, 1 / 4.
    np.testing.assert_allclose(scale_probabilities(p, 0.5), [[0.81 / 0.82, 0.01 / 0.82], [0.5, 0.5]], atol=1e-7)
    np.testing.assert_allclose(scale_probabilities(p, 2.0), [[0.75, 0.25], [0.5, 0.5]], atol=1e-7)
    assert scale_probabilities(p, 2.0).dtype == np.float32
    # The predicted class never changes.
    rows = np.random.default_rng(0).dirichlet(np.ones(10), 200).astype(np.float32)
    for temperature in (0.05, 0.7, 3.0, 20.0):
        assert (scale_probabilities(rows, temperature).argmax(axis=1) == rows.argmax(axis=1)).all()


def test_a_zero_probability_is_floored_not_minus_infinity():
    p = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(log_probabilities(p), [[0.0, np.log(PROBABILITY_FLOOR), np.log(PROBABILITY_FLOOR)]])
    assert np.log(PROBABILITY_FLOOR) == pytest.approx(-87.34, abs=0.01)
    soft = scale_probabilities(p, 2.0)  # each zero becomes floor ** (1 / 2) relative to the top class
    assert np.isfinite(soft).all()
    np.testing.assert_allclose(soft[0, 1:], np.sqrt(PROBABILITY_FLOOR), rtol=1e-5)
    np.testing.assert_array_equal(scale_probabilities(p, 0.05), p)  # sharper: the zeros stay zeros


def test_committee_temperature_scales_the_average(tmp_path):
    members = [_mlp(seed) for seed in (0, 1)]
    x = np.random.default_rng(1).normal(size=(32, 28, 28)).astype(np.float32)
    average = average_probabilities([member.predict_proba(x) for member in members])
    np.testing.assert_array_equal(Committee(members, ["a", "b"]).predict_proba(x), average)  # T = 1 by default
    sharp = Committee(members, ["a", "b"], temperature=0.25).predict_proba(x)
    expected = average.astype(np.float64) ** 4
    np.testing.assert_allclose(sharp, expected / expected.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-7)


@pytest.fixture
def committee_file(tmp_path):
    """A committee file in tmp/committee/models/ naming two saved members in tmp/members/, T = 0.8."""
    paths = [tmp_path / "members" / f"seed-{seed}" / "model.npz" for seed in (0, 1)]
    for seed, path in enumerate(paths):
        path.parent.mkdir(parents=True)
        _mlp(seed).save(path)
    committee = tmp_path / "committee" / "models" / "committee.json"
    write_committee_file(committee, paths, 0.8)
    return committee, paths


def test_committee_file_round_trip(committee_file, tmp_path, monkeypatch):
    committee, paths = committee_file
    document = json.loads(committee.read_text())
    assert document == {"format": "mnist-classification committee", "temperature": 0.8,
                        "members": [{"path": f"../../members/seed-{seed}/model.npz", "md5": file_md5(path)}
                                    for seed, path in enumerate(paths)]}
    members, temperature = read_committee_file(committee)
    assert temperature == 0.8 and [os.path.samefile(a, b) for a, b in zip(members, paths)] == [True, True]
    monkeypatch.chdir(tmp_path / "members")  # relative to the file, not to the working directory
    members, _ = read_committee_file(os.path.relpath(committee, tmp_path / "members"))
    assert [os.path.samefile(a, b) for a, b in zip(members, paths)] == [True, True]


def _edit(key, value):
    def edit(document):
        document[key] = value
        return document
    return edit


def _edit_member(key, value):
    def edit(document):
        document["members"][1][key] = value
        return document
    return edit


@pytest.mark.parametrize("damage,content,needle", [
    ("not JSON", b"PK\x03\x04 a zip archive", "is not JSON"),
    ("not UTF-8", b"\xff\xfe{}", "is not JSON"),
    ("a list", lambda document: [document], "is not a committee file (format 'list')"),
    ("another format", _edit("format", "mnist-classification model"), "is not a committee file (format "
                                                                       "'mnist-classification model')"),
    ("unknown key", _edit("weights", [0.5, 0.5]), "unknown key 'weights'"),
    ("no members", _edit("members", []), "members is not a non-empty list"),
    ("members not a list", _edit("members", "a.npz"), "members is not a non-empty list"),
    ("member without md5", lambda d: {**d, "members": [{"path": "a.npz"}]}, "a member is not"),
    ("md5 not hex", _edit_member("md5", "Z" * 32), "a member is not"),
    ("path not a string", _edit_member("path", 3), "a member is not"),
    ("temperature a string", _edit("temperature", "0.8"), "temperature is '0.8'; expected a finite number"),
    ("temperature a bool", _edit("temperature", True), "temperature is True"),
    ("temperature zero", _edit("temperature", 0), "temperature is 0; expected a finite number from 0.001"),
    ("temperature NaN", _edit("temperature", float("nan")), "temperature is nan"),
    ("temperature missing", lambda d: {k: v for k, v in d.items() if k != "temperature"}, "temperature is None"),
])
def test_damaged_committee_files_are_refused_in_one_line(committee_file, damage, content, needle):
    committee, _ = committee_file
    if callable(content):
        content = json.dumps(content(json.loads(committee.read_text()))).encode()
    committee.write_bytes(content)
    with pytest.raises(PipelineError) as error:
        read_committee_file(committee)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"committee file {committee}"), message
    assert needle in message, message
    assert message.endswith('"temperature": T}, as the ensemble stage writes it (dvc repro committee/dvc.yaml)')


def test_missing_large_and_mismatched_committee_files_are_refused_in_one_line(committee_file, tmp_path):
    committee, paths = committee_file

    def refused(path, *needles):
        with pytest.raises(PipelineError) as error:
            read_committee_file(path)
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"committee file {path}"), message
        for needle in needles:
            assert needle in message, message

    refused(tmp_path / "none.json", "not found; make it with `dvc repro committee/dvc.yaml`")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_COMMITTEE_FILE_BYTES + 1))
    refused(big, f"is {MAX_COMMITTEE_FILE_BYTES + 1} bytes, more than {MAX_COMMITTEE_FILE_BYTES}")
    refused(tmp_path, "cannot be read: Is a directory")

    recorded = file_md5(paths[1])
    _mlp(7).save(paths[1])  # the member retrained since the committee was made
    named = f"names member '../../members/seed-1/model.npz' (relative to {committee.parent}), which"
    refused(committee, f"{named} has changed since the committee was made (md5 {file_md5(paths[1])}, the file "
                       f"records {recorded}); rerun the ensemble (dvc repro committee/dvc.yaml)")
    paths[1].unlink()
    refused(committee, f"{named} is not found; fetch or train the members (dvc pull / dvc repro "
                       "committee/dvc.yaml)")
    document = json.loads(committee.read_text())
    document["members"][0]["path"] = "a\x00b\nc.npz"
    committee.write_text(json.dumps(document))
    refused(committee, "names member 'a\\x00b\\nc.npz'", "which cannot be read: embedded null byte")
