"""Attacks: parsing with errors that say how to fix the spec, pure and reproducible corruption."""

from __future__ import annotations

import math

import pytest
import torch

from p2ptrain.attacks import Attack, AttackSpecError, attack_for, draw_seed, parse_attack, parse_attacks

FLOATS = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def model(dtype=torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": (torch.randn(200, 50, generator=g) * 0.3 + 1).to(dtype),
            "b": torch.zeros(50, dtype=dtype),
            "s": torch.tensor(2.5, dtype=dtype)}


@pytest.mark.parametrize("spec, expected", [
    ("p3:scale:-10", Attack("p3", "scale", -10.0, 7)),
    ("p3:noise:5", Attack("p3", "noise", 5.0, 7)),
    ("p3:noise:0", Attack("p3", "noise", 0.0, 7)),
    ("p3:random", Attack("p3", "random", 10.0, 7)),
    ("p3:random:3", Attack("p3", "random", 3.0, 7)),
    (" p12:scale:1e3 ", Attack("p12", "scale", 1000.0, 7)),
    ("rack:2:noise:1", Attack("rack:2", "noise", 1.0, 7)),  # peer ids may hold colons
])
def test_parse(spec, expected):
    assert parse_attack(spec, seed=7) == expected


@pytest.mark.parametrize("spec, fix", [
    ("", "PEER:KIND"),
    ("p3", "PEER:KIND"),
    (":scale:2", "PEER:KIND"),
    ("p3:flip:2", "scale, noise, random"),
    ("p3:scale", "p3:scale:-10"),
    ("p3:noise", "p3:noise:5"),
    ("p3:scale:ten", "not a number"),
    ("p3:scale:nan", "finite"),
    ("p3:noise:inf", "finite"),
    ("p3:noise:-1", "p3:noise:5"),
    ("p3:random:0", "p3:random:10"),
    ("p3:scale:1:2", "PEER:KIND"),
])
def test_bad_specs_raise_a_value_error_that_says_how_to_write_one(spec, fix):
    with pytest.raises(AttackSpecError, match=fix) as raised:
        parse_attack(spec)
    assert isinstance(raised.value, ValueError)
    assert repr(spec) in str(raised.value)  # the message quotes what was given


def test_an_attack_of_unknown_kind_cannot_be_built():
    with pytest.raises(AttackSpecError, match="scale, noise, random"):
        Attack("p3", "flip", 1.0)


def test_unknown_attacker_names_the_peers_there_are():
    assert parse_attack("p3:random", peers=["p0", "p3"]).peer_id == "p3"
    with pytest.raises(AttackSpecError, match="no peer 'p9'.*p0, p1"):
        parse_attack("p9:random", peers=["p1", "p0"])


def test_several_attacks_one_per_attacker():
    attacks = parse_attacks(["p3:scale:-10", "p5:random"], seed=1, peers=[f"p{k}" for k in range(8)])
    assert attack_for(attacks, "p5") == Attack("p5", "random", 10.0, 1)
    assert attack_for(attacks, "p0") is None
    with pytest.raises(AttackSpecError, match="p3 named by more than one"):
        parse_attacks(["p3:scale:-10", "p3:noise:1"])


def test_applies_only_to_its_peer():
    attack = parse_attack("p3:scale:-10")
    assert attack.applies_to("p3")
    assert not attack.applies_to("p30") and not attack.applies_to("p")


@pytest.mark.parametrize("spec", ["p3:scale:-10", "p3:noise:5", "p3:random", "p3:noise:0"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_corrupt_keeps_shape_and_dtype_never_touches_its_input_and_returns_new_tensors(spec, dtype):
    tensors = model(dtype)
    before = {k: v.clone() for k, v in tensors.items()}
    out = parse_attack(spec).corrupt(tensors, 4)
    assert list(out) == list(tensors)
    for name, t in tensors.items():
        assert torch.equal(t, before[name])
        assert out[name].shape == t.shape and out[name].dtype == t.dtype
        assert out[name].data_ptr() != t.data_ptr()
        assert bool(torch.isfinite(out[name]).all())


def test_corrupt_does_not_need_or_keep_autograd():
    weight = torch.nn.Parameter(torch.ones(3))
    out = parse_attack("p3:noise:1").corrupt({"w": weight}, 0)
    assert not out["w"].requires_grad


def test_scale_multiplies_exactly():
    tensors = model(torch.float64)
    out = parse_attack("p3:scale:-10").corrupt(tensors, 0)
    for name, t in tensors.items():
        assert torch.equal(out[name], t * -10)


def test_noise_has_the_asked_standard_deviation_and_no_bias():
    tensors = model(torch.float64)
    out = parse_attack("p3:noise:5").corrupt(tensors, 0)
    noise = out["w"] - tensors["w"]  # 10,000 draws
    assert noise.std().item() == pytest.approx(5, rel=0.03)
    assert abs(noise.mean().item()) < 5 * 4 / math.sqrt(noise.numel())  # within 4 standard errors
    noiseless = parse_attack("p3:noise:0").corrupt(tensors, 0)
    assert all(torch.equal(noiseless[k], tensors[k]) for k in tensors)


def test_random_is_scaled_to_each_tensors_own_size_and_ignores_its_values():
    tensors = model(torch.float64)
    out = parse_attack("p3:random").corrupt(tensors, 0)
    rms = tensors["w"].pow(2).mean().sqrt().item()
    assert out["w"].std().item() == pytest.approx(10 * rms, rel=0.03)
    assert out["b"].std().item() == pytest.approx(10, rel=0.2)  # all zero: the fallback scale 1
    assert abs(torch.corrcoef(torch.stack([out["w"].reshape(-1), tensors["w"].reshape(-1)]))[0, 1].item()) < 0.05
    smaller = parse_attack("p3:random:3").corrupt(tensors, 0)
    assert smaller["w"].std().item() == pytest.approx(3 * rms, rel=0.03)


@pytest.mark.parametrize("spec", ["p3:noise:5", "p3:random"])
def test_draws_are_reproducible_and_depend_on_seed_round_and_tensor(spec):
    tensors = model(torch.float32)
    once = parse_attack(spec, seed=3).corrupt(tensors, 10)
    again = parse_attack(spec, seed=3).corrupt(tensors, 10)
    assert all(torch.equal(once[k], again[k]) for k in tensors)
    for other in (parse_attack(spec, seed=4).corrupt(tensors, 10), parse_attack(spec, seed=3).corrupt(tensors, 11)):
        assert not torch.equal(once["w"], other["w"])
    # Each tensor draws on its own: the order in which tensors are given changes nothing.
    reordered = parse_attack(spec, seed=3).corrupt(dict(reversed(list(tensors.items()))), 10)
    assert all(torch.equal(once[k], reordered[k]) for k in tensors)


def test_draws_do_not_depend_on_earlier_rounds():
    attack = parse_attack("p3:noise:1", seed=0)
    tensors = model()
    skipped = attack.corrupt(tensors, 5)
    for round_ in range(5):
        attack.corrupt(tensors, round_)
    assert torch.equal(attack.corrupt(tensors, 5)["w"], skipped["w"])


def test_draw_seed_is_stable_across_processes_and_versions():
    # A hash of its inputs, not Python's salted hash(): the same everywhere, always.
    assert draw_seed(0, "p3", 0, "w") == draw_seed(0, "p3", 0, "w")
    assert draw_seed(0, "p3", 0, "w") != draw_seed(0, "p3", 1, "w")
    assert 0 <= draw_seed(2**40, "a" * 100, 10**9, "x") < 2**63
    assert draw_seed(0, "p3", 0, "w") == 1727198339147687962


def test_integer_and_bool_tensors_pass_through_as_copies():
    tensors = {"count": torch.arange(5), "mask": torch.tensor([True, False])}
    for spec in ("p3:scale:-10", "p3:noise:5", "p3:random"):
        out = parse_attack(spec).corrupt(tensors, 0)
        for name, t in tensors.items():
            assert torch.equal(out[name], t) and out[name].data_ptr() != t.data_ptr()
