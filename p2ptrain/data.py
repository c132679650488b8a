"""Datasets and how they are split between peers.

Every peer computes the same partition from the same seed and keeps only its
own shard. The test split is fixed (it does not depend on the run's seed), so
accuracies of different runs and different peers are measured on the same data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .choices import DATASETS, DataError, parse_partition

# What the model predicts, which decides its loss and how it is evaluated.
TASKS = {"digits": "classification", "synthetic": "classification",
         "synthetic-lstsq": "regression", "breast-cancer": "binary"}
# The held-out split and the synthetic problem are the same for every run.
TEST_SPLIT_SEED = 0
SYNTHETIC_SEED = 1234


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    # Known generating parameters where the data is synthetic.
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    # Rows of the training set that belong to each peer when the data comes
    # already split (synthetic-lstsq); None when a partitioner splits it.
    blocks: list[np.ndarray] | None = None

    @property
    def task(self) -> str:
        return TASKS[self.name]

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


@dataclass
class Shard:
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_features: int
    n_classes: int
    indices: np.ndarray  # positions in the full training set, for reproducibility checks
    task: str = "classification"


def load_dataset(name: str, n_peers: int = 1) -> Dataset:
    """The whole dataset; ``n_peers`` matters only for data generated per peer (synthetic-lstsq)."""
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return synthetic_classification()
    if name == "synthetic-lstsq":
        return synthetic_least_squares(n_peers)
    if name == "breast-cancer":
        return _breast_cancer()
    raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixel intensities are 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=TEST_SPLIT_SEED
    )
    return Dataset("digits", x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), 10)


def _breast_cancer() -> Dataset:
    """Binary labels (1 = benign), standardised features plus a constant 1 for the bias: x has 31 entries."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=TEST_SPLIT_SEED
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)

    def prepare(features: np.ndarray) -> np.ndarray:
        scaled = (features - mean) / std
        return np.hstack([scaled, np.ones((len(scaled), 1))])

    return Dataset("breast-cancer", prepare(x_train), y_train.astype(np.int64), prepare(x_test),
                   y_test.astype(np.int64), 2)


def synthetic_least_squares(n_peers: int, rows: int = 40, n_features: int = 20, seed: int = SYNTHETIC_SEED) -> Dataset:
    """One block (A_i, b_i) per peer, deliberately unlike each other.

    Each peer's rows have their own mean and scale, and its targets come from
    its own shifted version of a common x, so every peer's local least-squares
    solution differs from the global one: averaging local solutions is wrong,
    and only real consensus finds lstsq of the stacked data.
    """
    rng = np.random.default_rng([seed, n_peers])
    x_common = rng.normal(size=n_features)
    blocks_a, blocks_b = [], []
    for _ in range(n_peers):
        scale = rng.uniform(0.5, 2.0)
        a = rng.normal(size=(rows, n_features)) * scale + rng.normal(size=n_features)
        x_local = x_common + rng.normal(scale=0.5, size=n_features)
        blocks_a.append(a)
        blocks_b.append(a @ x_local + rng.normal(scale=0.1, size=rows))
    a, b = np.vstack(blocks_a), np.concatenate(blocks_b)
    blocks = [np.arange(i * rows, (i + 1) * rows) for i in range(n_peers)]
    empty = np.zeros((0, n_features))
    return Dataset("synthetic-lstsq", a, b, empty, np.zeros(0), 0, truth={"x_common": x_common}, blocks=blocks)


def synthetic_classification(
    n_train: int = 4000, n_test: int = 1000, n_features: int = 20, n_classes: int = 4, seed: int = SYNTHETIC_SEED
) -> Dataset:
    """Labels drawn from a softmax of a known linear model: y ~ softmax(x W + b).

    ``truth`` holds W and b, so a test can compare what the swarm learned with
    what generated the data.
    """
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 1.0, size=(n_features, n_classes))
    bias = rng.normal(0.0, 0.5, size=n_classes)
    x = rng.normal(0.0, 1.0, size=(n_train + n_test, n_features))
    logits = x @ weights + bias
    # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits).
    y = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    x = x.astype(np.float32)
    return Dataset(
        "synthetic",
        x[:n_train],
        y[:n_train].astype(np.int64),
        x[n_train:],
        y[n_train:].astype(np.int64),
        n_classes,
        truth={"weights": weights, "bias": bias},
    )


def partition(labels: np.ndarray, n_peers: int, scheme: str, seed: int) -> list[np.ndarray]:
    """Indices of each peer's shard. Every shard is non-empty; the same seed gives the same split."""
    kind, alpha = parse_partition(scheme)
    n = len(labels)
    if n < n_peers:
        raise DataError(f"{n} training examples cannot give {n_peers} peers one each; use fewer peers")
    rng = np.random.default_rng([seed, 0x5EED])
    if kind == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(n), n_peers)]

    shards: list[list[int]] = [[] for _ in range(n_peers)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(n_peers, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for peer, part in enumerate(np.split(members, cuts)):
            shards[peer].extend(part.tolist())
    # Strong skew can leave a peer with nothing; give it one example from the
    # largest shard so every peer has data (deterministic, rng-driven).
    for peer in range(n_peers):
        if not shards[peer]:
            donor = max(range(n_peers), key=lambda p: len(shards[p]))
            taken = shards[donor].pop(int(rng.integers(len(shards[donor]))))
            shards[peer].append(taken)
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]


# Datasets generated one block per peer: no partitioner applies to them.
PRESPLIT = ("synthetic-lstsq",)


def check_partition(dataset: str, scheme: str) -> None:
    parse_partition(scheme)
    if dataset in PRESPLIT and scheme != "iid":
        raise DataError(f"{dataset} comes with one block of data per peer; --partition does not apply, "
                        "leave it at iid")


def shard_indices(data: Dataset, scheme: str, n_peers: int, seed: int) -> list[np.ndarray]:
    check_partition(data.name, scheme)
    if data.blocks is not None:
        return data.blocks
    return partition(data.y_train, n_peers, scheme, seed)


def load_shard(dataset: str, scheme: str, n_peers: int, peer_index: int, seed: int) -> Shard:
    data = load_dataset(dataset, n_peers)
    indices = shard_indices(data, scheme, n_peers, seed)[peer_index]
    return Shard(
        x=torch.from_numpy(data.x_train[indices]),
        y=torch.from_numpy(data.y_train[indices]),
        x_test=torch.from_numpy(data.x_test),
        y_test=torch.from_numpy(data.y_test),
        n_features=data.n_features,
        n_classes=data.n_classes,
        indices=indices,
        task=data.task,
    )
