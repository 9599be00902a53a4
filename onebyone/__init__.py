"""onebyone: put 1x1 bottleneck convolutions in front of spatial convolutions of ONNX models, and prove it."""

from onebyone.api import inspect, optimize, verify
from onebyone.passes.bottleneck_pass import BottleneckPass
from onebyone.passes.rank_policy import RankPolicy
from onebyone.verify.tolerances import APPROXIMATE, LOSSLESS, Tolerances

__version__ = "0.1.0"
__all__ = ["APPROXIMATE", "LOSSLESS", "BottleneckPass", "RankPolicy", "Tolerances", "inspect", "optimize", "verify"]
