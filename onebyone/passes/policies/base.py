"""The policy base class, the registry and the constructor by name (see onebyone.passes.policies)."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

POLICIES: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a policy available by its `kind` (RankPolicy(kind, ...), --policy kind)."""
    POLICIES[cls.kind] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class Policy:
    """What every policy has: `round_to` > 1 rounds ranks up to a multiple (hardware-friendly widths), capped at C/g."""

    kind: ClassVar[str] = ""
    uses_gains: ClassVar[bool] = False
    searched: ClassVar[bool] = False
    round_to: int = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        if self.round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {self.round_to}")
        self.validate()

    def validate(self) -> None:
        """Raise ValueError for option values the policy cannot use."""

    @property
    def needs_latency(self) -> bool:
        """Whether the policy chooses by measured time (the pass then needs a latency model)."""
        return False

    def label(self) -> str:
        """What the policy does, in a few words (e.g. 'energy 0.9')."""
        return self.kind

    def describe(self) -> str:
        """label() and the rounding, e.g. 'energy 0.9, round to 8'."""
        return self.label() + (f", round to {self.round_to}" if self.round_to > 1 else "")

    def assign(self, decisions, gains=None) -> None:
        raise NotImplementedError

    def rounded(self, rank: int, c_per_group: int) -> int:
        """`rank` clamped to 1..C/g and rounded up to a multiple of round_to (capped at C/g)."""
        rank = max(1, min(rank, c_per_group))
        if self.round_to > 1:
            rank = min(c_per_group, math.ceil(rank / self.round_to) * self.round_to)
        return rank


def RankPolicy(kind: str = "exact", **options) -> Policy:  # noqa: N802 - the public constructor by name
    """The policy registered as `kind` with its options (e.g. RankPolicy("energy", energy=0.95, round_to=8));
    options it does not take must be None. ValueError for an unknown kind or bad values."""
    if kind not in POLICIES:
        raise ValueError(f"unknown policy {kind!r} (expected {', '.join(POLICIES)})")
    cls = POLICIES[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(given) - fields)
    if extra:
        raise ValueError(f"policy {kind!r} takes no {', '.join(extra)}")
    return cls(**given)
