"""A committee averages its members' probabilities, and refuses members that do not agree."""

import numpy as np
import pytest

from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.params import validate
from mnist_classification.nn.committee import Committee, average_probabilities, load_committee
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
