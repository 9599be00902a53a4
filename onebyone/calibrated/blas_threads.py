"""numpy's BLAS on one thread while numpy work alternates with onnxruntime runs sample by sample.

OpenBLAS threads keep spinning for a while after each product, on the cores onnxruntime's next run needs: collecting
open_nsfw's channel moments over 512 samples, every onnxruntime run took 3x its time alone (11.1 s for the stage;
with BLAS on one thread, 3.9 s). Stages that run onnxruntime over all samples first and then multiply (the fitting
walk) keep every BLAS thread.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits


def alongside_onnxruntime():
    """A context in which numpy's BLAS uses one thread (restored on exit)."""
    return threadpool_limits(1, user_api="blas")
