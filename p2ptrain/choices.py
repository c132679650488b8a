"""What an option may say: the names of algorithms, aggregators, datasets, models and attacks, and the
parsing of the options written as small languages (--partition, --attack).

Nothing here imports torch, so a command line can be checked, and refused
with its fix, in milliseconds; the modules that do the work import their
names from here.
"""

from __future__ import annotations

import math
from typing import Iterable

ALGORITHMS = ("gossip", "admm", "gradient-tracking", "push-sum", "choco")
AGGREGATORS = ("mean", "clipped", "trimmed-mean")
DATASETS = ("digits", "synthetic", "synthetic-lstsq", "breast-cancer")
MODELS = ("auto", "logreg", "mlp", "linear")
ATTACK_KINDS = ("scale", "noise", "random")
ATTACK_EXAMPLES = "p3:scale:-10, p3:noise:5 or p3:random"
DEFAULT_RANDOM_MAGNITUDE = 10.0


class AggregatorError(ValueError):
    """A robust-mixing option that cannot work; the message says what to use instead."""


class CompressorError(ValueError):
    """A --compressor that cannot be parsed; the message says how to write it."""


class DataError(ValueError):
    pass


class AttackSpecError(ValueError):
    """An --attack that cannot be parsed; the message says how to write it."""


def check_aggregator(name: str, b: int) -> None:
    if name not in AGGREGATORS:
        raise AggregatorError(f"aggregator {name!r} is unknown; choose one of {', '.join(AGGREGATORS)}")
    if isinstance(b, bool) or not isinstance(b, int) or b < 0:
        raise AggregatorError(f"b = {b!r}: the number of bad neighbours to tolerate must be an integer >= 0 "
                              "(1 is the usual choice; 0 clips and trims nothing)")


COMPRESSORS = ("identity", "int8", "top-k", "random-k")
COMPRESSOR_EXAMPLES = "identity, int8, int8:256, top-k:0.01 or random-k:0.01"


def parse_compressor(text: str) -> tuple[str, float | None]:
    """CHOCO's --compressor: identity, int8, int8:CHUNK (an integer >= 1), top-k:F or random-k:F (0 < F <= 1)."""
    kind, colon, value = text.partition(":")
    if kind in ("identity", "int8") and not colon:
        return kind, None
    if kind == "int8" and value.isdigit() and int(value) >= 1:
        return kind, float(int(value))
    if kind in ("top-k", "random-k") and colon:
        try:
            fraction = float(value)
        except ValueError:
            fraction = math.nan
        if 0 < fraction <= 1:
            return kind, fraction
        raise CompressorError(f"compressor {text!r}: the fraction of entries kept must be in (0, 1], e.g. {kind}:0.01")
    raise CompressorError(f"compressor {text!r} not understood; write one of {COMPRESSOR_EXAMPLES} (int8:CHUNK: one "
                          "scale per CHUNK values; top-k/random-k:F: keep the fraction F of the entries)")


def parse_partition(text: str) -> tuple[str, float | None]:
    """'iid' or 'dirichlet:ALPHA' (ALPHA > 0; smaller means more label skew)."""
    if text == "iid":
        return "iid", None
    if text.startswith("dirichlet:"):
        try:
            alpha = float(text.split(":", 1)[1])
        except ValueError:
            alpha = -1.0
        if alpha > 0 and math.isfinite(alpha):
            return "dirichlet", alpha
    raise DataError(f"partition {text!r} not understood; use 'iid' or 'dirichlet:ALPHA' with ALPHA > 0, e.g. dirichlet:0.3")


def read_attack(spec: str, peers: Iterable[str] | None = None) -> tuple[str, str, float]:
    """``PEER:KIND[:VALUE]`` as (peer, kind, value); with ``peers``, the attacker must be one of them."""
    peer_id, kind, text = _split(spec)
    if not peer_id or not kind:
        raise AttackSpecError(f"attack {spec!r}: write PEER:KIND[:VALUE], e.g. {ATTACK_EXAMPLES}")
    if kind not in ATTACK_KINDS:
        raise AttackSpecError(f"attack {spec!r}: unknown kind {kind!r}; write PEER:KIND[:VALUE] with KIND one "
                              f"of {', '.join(ATTACK_KINDS)}, e.g. {ATTACK_EXAMPLES}")
    value = _value(spec, kind, text)
    if peers is not None and peer_id not in set(peers):
        raise AttackSpecError(f"attack {spec!r}: no peer {peer_id!r} in the topology; "
                              f"name one of {', '.join(sorted(peers))}")
    return peer_id, kind, value


def check_attackers(peer_ids: list[str]) -> None:
    """One attack per attacker: two for one peer would leave which one acts to chance."""
    repeated = sorted({peer_id for peer_id in peer_ids if peer_ids.count(peer_id) > 1})
    if repeated:
        raise AttackSpecError(f"peer(s) {', '.join(repeated)} named by more than one attack; give each "
                              "attacker one --attack")


def _split(spec: str) -> tuple[str, str, str | None]:
    """PEER, KIND and VALUE (None when absent), read from the right: peer ids may contain colons."""
    head, _, last = spec.strip().rpartition(":")
    if last in ATTACK_KINDS:
        return head, last, None
    peer_id, _, kind = head.rpartition(":")
    return peer_id, kind, last


def _value(spec: str, kind: str, text: str | None) -> float:
    if text is None:
        if kind == "random":
            return DEFAULT_RANDOM_MAGNITUDE
        needs = "a factor, e.g. p3:scale:-10" if kind == "scale" else "a standard deviation, e.g. p3:noise:5"
        raise AttackSpecError(f"attack {spec!r}: {kind} needs {needs}")
    try:
        value = float(text)
    except ValueError:
        raise AttackSpecError(f"attack {spec!r}: {text!r} is not a number; e.g. {ATTACK_EXAMPLES}") from None
    if not math.isfinite(value):
        raise AttackSpecError(f"attack {spec!r}: the value must be a finite number; e.g. {ATTACK_EXAMPLES}")
    if kind == "noise" and value < 0:
        raise AttackSpecError(f"attack {spec!r}: a standard deviation cannot be negative; e.g. p3:noise:5")
    if kind == "random" and value <= 0:
        raise AttackSpecError(f"attack {spec!r}: the magnitude must be > 0; e.g. p3:random:10")
    return value
