"""Datasets and partitions: reproducible, complete, non-empty, skewed when asked."""

from __future__ import annotations

import numpy as np
import pytest

from p2ptrain.data import DataError, load_dataset, load_shard, parse_partition, partition


def labels(n=1000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, size=n)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.1", "dirichlet:1", "dirichlet:100"])
@pytest.mark.parametrize("peers", [1, 2, 8, 33])
def test_partition_covers_every_example_once_and_no_shard_is_empty(scheme, peers):
    y = labels()
    shards = partition(y, peers, scheme, seed=3)
    assert len(shards) == peers
    assert all(len(s) > 0 for s in shards)
    together = np.concatenate(shards)
    assert sorted(together.tolist()) == list(range(len(y)))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.3"])
def test_partition_is_reproducible_from_the_seed(scheme):
    y = labels()
    a = partition(y, 8, scheme, seed=7)
    b = partition(y, 8, scheme, seed=7)
    c = partition(y, 8, scheme, seed=8)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c))


def test_iid_shards_are_balanced():
    sizes = [len(s) for s in partition(labels(1001), 8, "iid", seed=0)]
    assert max(sizes) - min(sizes) <= 1


def label_entropy(y, shards, classes=10):
    entropies = []
    for s in shards:
        p = np.bincount(y[s], minlength=classes) / len(s)
        p = p[p > 0]
        entropies.append(-(p * np.log(p)).sum())
    return float(np.mean(entropies))


def test_smaller_dirichlet_alpha_means_more_label_skew():
    y = labels(5000)
    iid = label_entropy(y, partition(y, 8, "iid", seed=0))
    mild = label_entropy(y, partition(y, 8, "dirichlet:10", seed=0))
    strong = label_entropy(y, partition(y, 8, "dirichlet:0.1", seed=0))
    assert iid > mild > strong
    assert iid == pytest.approx(np.log(10), rel=0.01)
    assert strong < 0.6 * np.log(10)


def test_extreme_skew_still_gives_every_peer_data():
    y = labels(100, classes=2)
    shards = partition(y, 50, "dirichlet:0.01", seed=0)
    assert all(len(s) >= 1 for s in shards)


@pytest.mark.parametrize("text", ["dirichlet", "dirichlet:", "dirichlet:0", "dirichlet:-1", "dirichlet:x",
                                  "dirichlet:nan", "noniid"])
def test_bad_partition_text_says_what_to_write(text):
    with pytest.raises(DataError, match="use 'iid' or 'dirichlet:ALPHA'"):
        parse_partition(text)


def test_more_peers_than_examples_is_refused():
    with pytest.raises(DataError, match="use fewer peers"):
        partition(labels(5), 6, "iid", seed=0)


def test_digits_has_a_fixed_test_split_shared_by_every_peer():
    data = load_dataset("digits")
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64)
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1
    a = load_shard("digits", "iid", 8, 0, seed=1)
    b = load_shard("digits", "dirichlet:0.5", 8, 5, seed=2)
    assert np.array_equal(a.x_test.numpy(), b.x_test.numpy())
    assert set(np.unique(data.y_test)) == set(range(10))


def test_synthetic_labels_follow_the_known_model():
    data = load_dataset("synthetic")
    logits = data.x_test @ data.truth["weights"] + data.truth["bias"]
    # The generating model's own accuracy: well above chance (0.25), below 1 (labels are sampled).
    accuracy = (logits.argmax(1) == data.y_test).mean()
    assert 0.6 < accuracy < 0.98
    assert np.array_equal(load_dataset("synthetic").x_train, data.x_train)


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(DataError, match="choose from digits, synthetic"):
        load_dataset("mnist")
