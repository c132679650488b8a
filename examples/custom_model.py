"""Your own model in a swarm: a small CNN with BatchNorm on scikit-learn's 8x8 digits, trained with Adam.

As a task:  python3 scripts/launch_swarm.py topologies/ring4.toml --task examples/custom_model.py:task
As your own loop, a process per peer, with the keys of python3 -m p2ptrain.keys generate --topology
topologies/ring4.toml --dir keys/ring4 (or --insecure instead of the keys directory, on a network you trust):
    torchrun --nproc_per_node 4 examples/custom_model.py topologies/ring4.toml keys/ring4
"""
import sys

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import p2ptrain

x, y = load_digits(return_X_y=True)
x = torch.tensor(x / 16, dtype=torch.float32).reshape(-1, 1, 8, 8)
x_train, x_test, y_train, y_test = train_test_split(x, torch.tensor(y), test_size=0.2, stratify=y, random_state=0)


class DigitsCNN(p2ptrain.Task):
    name = "digits-cnn"
    defaults = {"lr": 0.003, "rounds": 150, "local_steps": 1}

    def build_model(self):
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(32 * 2 * 2, 10))

    def shard(self, index, count, seed):  # every count-th example from index: disjoint, the same on every peer
        shuffle = torch.Generator().manual_seed(seed * 1000 + index)
        return DataLoader(TensorDataset(x_train[index::count], y_train[index::count]), batch_size=32,
                          shuffle=True, generator=shuffle)

    def loss(self, model, batch):
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels)

    def evaluate(self, model):
        device = next(model.parameters()).device
        output = model(x_test.to(device))
        return {"test_loss": F.cross_entropy(output, y_test.to(device)).item(),
                "test_accuracy": (output.argmax(1) == y_test.to(device)).float().mean().item()}

    def optimizer(self, parameters, lr, momentum, weight_decay):
        return torch.optim.Adam(parameters, lr=lr)


task = DigitsCNN()

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: examples/custom_model.py TOPOLOGY KEYS_DIR|--insecure (keys: python3 -m p2ptrain.keys "
                 "generate --topology TOPOLOGY --dir KEYS_DIR)")
    torch.manual_seed(0)  # the same initial model on every peer
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    security = {"insecure": True} if sys.argv[2] == "--insecure" else {"keys": sys.argv[2]}
    with p2ptrain.Peer(sys.argv[1], model, optimizer, local_steps=1, log_level="INFO", **security) as peer:
        loader = task.shard(peer.index, peer.count, seed=0)
        for epoch in range(13):  # 12 batches an epoch: 156 exchanges, about the task's 150 rounds
            for batch in loader:
                optimizer.zero_grad()
                task.loss(model, batch).backward()
                optimizer.step()  # exchanges with the neighbours after every local_steps steps
        with torch.no_grad():
            print(f"{peer.id}: {task.evaluate(model.eval())}")
