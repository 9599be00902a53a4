"""What a target family says about itself: its presets (JSON-dict TVM targets), where its code runs, how it is built
and loaded, and how close TVM's results must be to onnxruntime's there. One module per family registers it."""

from __future__ import annotations

import dataclasses
import platform
from typing import Any, Callable

from onebyone.verify.tolerances import Tolerances

FAMILIES: list["Family"] = []
PRESETS: dict[str, Callable[[], dict[str, Any]]] = {}


@dataclasses.dataclass(frozen=True)
class Family:
    """A kind of target. `claims(target)` says whether a target dict belongs to it (families are asked in
    registration order, most specific first); `presets` are the names it answers to."""

    name: str
    device: str  # "cpu" or "cuda": where a package runs (TVM device)
    tolerances: Tolerances  # TVM's outputs vs onnxruntime's on this target
    claims: Callable[[dict[str, Any]], bool]
    presets: dict[str, Callable[[], dict[str, Any]]] = dataclasses.field(default_factory=dict)
    cross_compiler: str | None = None  # the C++ compiler that links its libraries on this machine (None: the host's)

    def load_runtime(self, where=None) -> None:
        """Make TVM's runtime for this device available (raises OneByOneError naming what is missing)."""

    def check_build(self, executable, target: dict[str, Any], folder) -> dict[str, Any] | None:
        """Checks of the built code written into the package folder (None: nothing to check)."""
        return None

    def worker_initializer(self):
        """A function run in each tuning-runner worker before it times candidates (None: none needed)."""
        return None


def register(family: Family) -> Family:
    """Add a family and its presets (later registrations of a preset name replace earlier ones)."""
    FAMILIES.append(family)
    PRESETS.update(family.presets)
    return family


def triple_is_foreign(target: dict[str, Any]) -> bool:
    """True when the target's triple is not this machine's (its libraries need a cross toolchain)."""
    triple = target.get("mtriple") or (target.get("host") or {}).get("mtriple")
    return bool(triple) and not triple.startswith(platform.machine())
