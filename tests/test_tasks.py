"""Tasks: found by name, checked, trained the same way as the built-ins; batches reproducible and resumable."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sys
import textwrap

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from p2ptrain.builtin_tasks import DatasetTask, task_from_options
from p2ptrain.config import DEFAULT_BATCH_SIZE, ConfigError, PeerConfig, parse_task_args
from p2ptrain.inprocess import local_endpoints, run_in_process
from p2ptrain.running import run_peer
from p2ptrain.replica import build_replica, exchanged_tensors
from p2ptrain.simulate import simulate
from p2ptrain.storage import read_json_lines
from p2ptrain.swarm import centralized
from p2ptrain.task import TaskError, load_task
from p2ptrain.topology import generate
from p2ptrain.training import Batches, as_dataset, to_device

from .plugin_tasks import BatchNormAdam
from .processes import ROOT

PLUGIN = str(ROOT / "tests" / "plugin_tasks.py")


@pytest.mark.parametrize("spec", ["tests.plugin_tasks:batchnorm_adam", f"{PLUGIN}:batchnorm_adam",
                                  f"{PLUGIN}:make_task", f"{PLUGIN}:BatchNormAdam"])
def test_a_task_is_found_as_module_attribute_or_file_attribute_object_or_factory(spec):
    task = load_task(spec)
    assert type(task).__name__ == "BatchNormAdam"


@pytest.mark.parametrize("spec, message", [
    ("no-colon", "name a task as package.module:attribute"),
    (f"{PLUGIN}:missing", "has no attribute 'missing' (it has"),
    ("no/such/file.py:task", "no file no/such/file.py"),
    ("no_such_module_here:task", "cannot import no_such_module_here"),
    (f"{PLUGIN}:FEATURES", "gives a Tensor, which lacks build_model, shard, loss"),
    (f"{PLUGIN}:stack", "calling it with no arguments failed"),
    (f"{PLUGIN}:Examples", "calling it with no arguments failed"),
])
def test_a_task_that_cannot_be_used_is_refused_with_the_fix(spec, message):
    with pytest.raises(TaskError, match=message.replace("(", r"\(")):
        load_task(spec)


@pytest.mark.parametrize("code, failure", [
    ("def task(:\n    pass\n", "broken.py:1: SyntaxError"),
    ("import os\nraise RuntimeError('no data here')\n", "broken.py:2: RuntimeError: no data here"),
])
def test_a_task_file_that_fails_to_import_is_named_with_the_line_where_it_failed(tmp_path, code, failure):
    path = tmp_path / "broken.py"
    path.write_text(code)
    with pytest.raises(TaskError, match=f"failed to import: .*{failure}"):
        load_task(f"{path}:task")


def test_an_object_without_the_required_methods_is_refused(tmp_path):
    path = tmp_path / "half.py"
    path.write_text("class Half:\n    def build_model(self):\n        return None\n\nhalf = Half()\n")
    with pytest.raises(TaskError, match="lacks shard, loss"):
        load_task(f"{path}:half")


def test_a_task_module_of_the_current_directory_is_found_as_python_dash_m_finds_it(tmp_path, monkeypatch):
    (tmp_path / "my_own_task.py").write_text((ROOT / "tests" / "plugin_tasks.py").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])  # as a launcher script
    monkeypatch.delitem(sys.modules, "my_own_task", raising=False)
    assert type(load_task("my_own_task:batchnorm_adam")).__name__ == "BatchNormAdam"
    sys.modules.pop("my_own_task", None)
    with pytest.raises(TaskError, match="cannot import not_a_module_here"):
        load_task("not_a_module_here:task")


def test_task_args_read_booleans_numbers_and_text():
    assert parse_task_args("bias=false,norm=True,layers=4,scale=0.5,text=a.txt") == {
        "bias": False, "norm": True, "layers": 4, "scale": 0.5, "text": "a.txt"}
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        parse_task_args("layers")


def test_a_task_parameter_annotated_str_gets_its_text_as_written_and_unknown_ones_are_named(tmp_path):
    path = tmp_path / "made.py"
    path.write_text(textwrap.dedent(f"""
        from importlib import import_module
        base = import_module("p2ptrain").Task

        class Made(base):
            def __init__(self, text: str = "", seed_text: str = "", layers: int = 1):
                self.text, self.seed_text, self.layers = text, seed_text, layers
            build_model = shard = loss = lambda self, *a: None
    """))
    made = task_from_options(f"{path}:Made", task_args="text=007,seed_text=0123,layers=2")
    assert (made.text, made.seed_text, made.layers) == ("007", "0123", 2)  # not 7 and 123; a number stays one
    with pytest.raises(TaskError, match="takes no --task-args Text; it takes text, seed_text, layers"):
        task_from_options(f"{path}:Made", task_args="Text=x")


def test_dataset_and_model_options_name_the_same_built_in_task_as_task():
    by_dataset = task_from_options("", dataset="breast-cancer", model="auto")
    by_task = task_from_options("breast-cancer")
    assert type(by_dataset) is type(by_task) and by_dataset.model_name == by_task.model_name == "linear"
    assert hasattr(by_task, "centralized_optimum")
    for given in ({"model": "mlp"}, {"partition": "dirichlet:0.1"}, {"dataset": "synthetic"}, {"hidden": 128}):
        with pytest.raises(TaskError, match="drop them"):  # a plugin's own data and model: nothing to choose
            task_from_options(f"{PLUGIN}:batchnorm_adam", **given)
    with pytest.raises(TaskError, match="--task breast-cancer and --dataset synthetic name two tasks"):
        task_from_options("breast-cancer", dataset="synthetic")
    assert task_from_options("synthetic", dataset="synthetic").name == "synthetic"


def test_mlp_and_auto_build_the_same_network_and_so_the_same_fingerprint_input():
    topology = generate("ring", 4)
    a = build_replica(PeerConfig(topology="-", model="mlp"), topology, "p0")
    b = build_replica(PeerConfig(topology="-", model="auto"), topology, "p0")
    assert a.agreement == b.agreement == {"algorithm": "gossip"}
    assert [(n, t.shape) for n, t in a.algorithm.outgoing(0).items()] == \
        [(n, t.shape) for n, t in b.algorithm.outgoing(0).items()]


def test_floating_buffers_are_exchanged_and_integer_buffers_stay_local():
    model = BatchNormAdam().build_model()
    names = set(exchanged_tensors(model))
    assert {"1.running_mean", "1.running_var", "1.weight", "0.weight"} <= names
    assert "1.num_batches_tracked" not in names


def test_batches_cover_every_example_once_per_epoch_and_resume_exactly():
    dataset = TensorDataset(torch.arange(10.0))
    batches = Batches(dataset, 3, seed=5)
    epoch = torch.cat([batches.next()[0] for _ in range(3)])  # 9 of 10: a short last batch is not drawn
    assert len(set(epoch.tolist())) == 9
    state = batches.state_dict()
    ahead = [batches.next()[0] for _ in range(5)]
    again = Batches(dataset, 3, seed=99)
    again.load_state_dict(state)
    assert all(torch.equal(a, again.next()[0]) for a in ahead)
    assert torch.equal(Batches(dataset, 3, seed=5).next()[0], epoch[:3])  # the seed decides the order


def test_a_collate_of_the_tasks_own_is_called_over_tensors_too_and_namedtuple_batches_reach_the_device():
    x, y = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    to_dict = lambda rows: {"inputs": torch.stack([r[0] for r in rows]), "labels": torch.stack([r[1] for r in rows])}
    dataset, collate, _ = as_dataset(DataLoader(TensorDataset(x, y), batch_size=4, collate_fn=to_dict))
    batch = Batches(dataset, 4, seed=0, collate=collate).next()
    assert set(batch) == {"inputs", "labels"} and batch["inputs"].shape == (4, 2)
    Example = collections.namedtuple("Example", "x y")
    moved = to_device(Example(x, y), torch.device("cpu"))
    assert type(moved) is Example and torch.equal(moved.y, y)


def test_a_dataloader_gives_its_dataset_batch_size_and_collate():
    task = BatchNormAdam()
    dataset, collate, batch_size = as_dataset(task.shard(1, 4, seed=0))
    assert (len(dataset), batch_size) == (375, 16)
    pixels, labels = Batches(dataset, batch_size, seed=0, collate=collate).next()
    assert pixels.shape == (16, 64) and labels.shape == (16,)
    with pytest.raises(TypeError, match="Dataset .* or a DataLoader over one, not a int"):
        as_dataset(42)


class Stream(IterableDataset):
    def __iter__(self):
        return iter([(torch.zeros(2), torch.tensor(0))] * 4)


@pytest.mark.parametrize("shard, fix", [
    (DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=None), "give the DataLoader a batch_size"),
    (Stream(), "not an IterableDataset"),
    (DataLoader(Stream(), batch_size=2), "not an IterableDataset"),
])
def test_a_shard_a_peer_cannot_draw_batches_from_by_index_is_refused_with_the_fix(shard, fix):
    with pytest.raises(TypeError, match=fix):
        as_dataset(shard)


def test_a_dataloader_batched_by_a_batch_sampler_gives_the_samplers_batch_size():
    from torch.utils.data import BatchSampler, SequentialSampler

    examples = TensorDataset(torch.zeros(10, 2))  # its loader's batch_size reads None: batching is the sampler's
    loader = DataLoader(examples, batch_sampler=BatchSampler(SequentialSampler(examples), 4, drop_last=False))
    assert as_dataset(loader)[0] is examples and as_dataset(loader)[2] == 4


def test_batch_size_is_the_dataloaders_unless_given_and_the_centralized_baseline_scales_what_is_used():
    ring4, task = generate("ring", 4), f"{PLUGIN}:batchnorm_adam"  # its DataLoader takes 16 per batch
    own = PeerConfig(topology="-", task=task).validate()
    given = own.replace(batch_size=8)
    assert build_replica(own, ring4, "p1").batch_size == 16 and build_replica(given, ring4, "p1").batch_size == 8
    assert build_replica(PeerConfig(topology="-").validate(), ring4, "p1").batch_size == DEFAULT_BATCH_SIZE
    # Alone on all the data, the baseline takes as many examples a step as the four peers together.
    for config, expected in [(own, 4 * 16), (given, 4 * 8)]:
        alone, baseline = centralized(ring4, config, load_task(task))
        assert build_replica(baseline, alone, "p0").batch_size == expected


def test_the_simulation_of_a_batchnorm_task_brings_buffers_to_consensus_and_keeps_step_counts_local():
    config = PeerConfig(topology="-", task=f"{PLUGIN}:batchnorm_adam", rounds=60, local_steps=2, lr=0.01,
                        lr_schedule="cosine").validate()
    states = simulate(config, generate("complete", 4))
    means = torch.stack([s["1.running_mean"] for s in states.values()])
    assert float((means - means.mean(0)).abs().max()) < 1e-6  # complete graph, Metropolis: exact average
    assert all(int(s["1.num_batches_tracked"]) == 120 for s in states.values())  # 60 rounds x 2 steps, local
    replica = build_replica(config, generate("complete", 4), "p0")
    replica.model.load_state_dict(states["p0"])
    assert replica.evaluate()["test_accuracy"] > 0.85


@pytest.mark.swarm
@pytest.mark.asyncio
async def test_an_in_process_swarm_of_a_plugin_task_through_the_staging_path_equals_the_simulation(tmp_path):
    # --staging always sends every tensor through the host buffers and copies what arrives, as on a GPU.
    topology = local_endpoints(generate("ring", 4), "staged", "inproc")
    config = PeerConfig(topology="-", task=f"{PLUGIN}:batchnorm_adam", rounds=12, local_steps=2, lr=0.01,
                        staging="always", run_id="staged", eval_every=6, log_level="WARNING").validate()
    assert await run_in_process(topology, config, tmp_path) == {pid: 0 for pid in topology.ids}
    for peer_id, state in simulate(config, topology).items():
        got = torch.load(tmp_path / peer_id / "model.pt", weights_only=True)
        assert set(got) == set(state)
        for name, tensor in state.items():
            assert torch.equal(got[name], tensor), f"{peer_id} {name}"
    result = json.loads((tmp_path / "p1" / "result.json").read_text())
    assert result["test_accuracy"] > 0.5 and result["status"] == "completed"


async def _pair(tmp_path, first: dict, second: dict) -> dict[str, dict]:
    """Two peers of a pair in one process, each with its own options; their results and metrics."""
    topology = local_endpoints(generate("complete", 2), f"pair-{tmp_path.name}", "inproc")
    import zmq.asyncio

    context = zmq.asyncio.Context()
    common = dict(topology="-", rounds=4, run_id="pair", recv_timeout=0.5, startup_timeout=2, eval_every=4)
    configs = {"p0": PeerConfig(**common, peer="p0", out=str(tmp_path / "p0"), **first).validate(),
               "p1": PeerConfig(**common, peer="p1", out=str(tmp_path / "p1"), **second).validate()}
    try:
        codes = await asyncio.gather(*(run_peer(c, context, topology, []) for c in configs.values()))
    finally:
        context.term()
    assert codes == [0, 0]
    return {pid: {"result": json.loads((tmp_path / pid / "result.json").read_text()),
                  "metrics": read_json_lines(tmp_path / pid / "metrics.jsonl")} for pid in configs}


@pytest.mark.swarm
@pytest.mark.asyncio
@pytest.mark.parametrize("second, named", [
    ({"hidden": 32}, "shape [32, 64] from 'p1', [64, 64] here"),
    ({"algo": "admm", "admm_solver": "inexact"}, "different algorithms"),
    ({"algo": "admm", "admm_solver": "inexact", "admm_penalty": 0.5}, None),
])
async def test_a_neighbour_with_another_model_or_algorithm_is_rejected_with_the_mismatch_named(
        tmp_path, caplog, second, named):
    first = {"algo": "admm", "admm_solver": "inexact"} if named is None else {}
    with caplog.at_level(logging.WARNING, logger="p2ptrain.peer"):
        outcome = await _pair(tmp_path, first, second)
    for peer_id in ("p0", "p1"):
        assert outcome[peer_id]["result"]["rejected"].get("fingerprint", 0) >= 1
        assert all(record["heard"] == [] for record in outcome[peer_id]["metrics"])
    rejections = [r.getMessage() for r in caplog.records if "rejected message" in r.getMessage()]
    expected = named or "same tensors, so the algorithm's settings differ"
    assert any(expected in line for line in rejections), rejections


@pytest.mark.swarm
@pytest.mark.asyncio
async def test_neighbours_whose_options_differ_only_in_what_may_differ_mix_every_round(tmp_path):
    outcome = await _pair(tmp_path, {"lr": 0.1, "local_steps": 1, "log_level": "INFO", "model": "mlp"},
                          {"lr": 0.03, "local_steps": 3, "log_level": "WARNING", "model": "auto"})
    for peer_id, other in (("p0", "p1"), ("p1", "p0")):
        assert outcome[peer_id]["result"]["rejected"] == {}
        assert [record["heard"] for record in outcome[peer_id]["metrics"]] == [[other]] * 4


def test_a_task_with_no_admm_penalty_is_refused_for_admm_with_the_fix():
    config = PeerConfig(topology="-", task=f"{PLUGIN}:batchnorm_adam", algo="admm").validate()
    with pytest.raises(ConfigError, match="pass --admm-penalty C"):
        build_replica(config, generate("ring", 4), "p0")


def test_a_built_in_task_is_a_task_like_any_plugin():
    task = DatasetTask("digits", "logreg")
    torch.manual_seed(0)
    model = task.build_model()
    batch = next(iter(DataLoader(task.shard(0, 4, seed=0), batch_size=8)))
    assert task.loss(model, batch).ndim == 0
    assert set(task.evaluate(model)) == {"test_loss", "test_accuracy"}
