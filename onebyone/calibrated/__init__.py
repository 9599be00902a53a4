"""Everything data-aware: calibration moments, whitening, patch statistics and fitting, output gains (sensitivity),
the error-budget search and the held-out rule, behind one interface the pass calls (`DataSource`). Runs the model in
onnxruntime through one door, onebyone.verify.onnxruntime_run.Probe."""

from onebyone.calibrated.source import DataSource

__all__ = ["DataSource"]
