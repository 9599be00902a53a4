"""onebyone: put 1x1 bottleneck convolutions in front of spatial convolutions of ONNX models, and prove it."""

__version__ = "0.1.0"

from onebyone.api import inspect, optimize, verify  # noqa: E402
from onebyone.errors import OneByOneError, VerificationFailed  # noqa: E402
from onebyone.passes.bottleneck_pass import BottleneckPass  # noqa: E402
from onebyone.passes.policies import POLICIES, Policy, RankPolicy  # noqa: E402
from onebyone.verify.tolerances import APPROXIMATE, LOSSLESS, Tolerances  # noqa: E402

__all__ = ["APPROXIMATE", "LOSSLESS", "POLICIES", "BottleneckPass", "OneByOneError", "Policy", "RankPolicy", "Tolerances",
           "VerificationFailed", "inspect", "optimize", "verify"]
