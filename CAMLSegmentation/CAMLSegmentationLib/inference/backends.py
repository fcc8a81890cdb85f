"""Which engine runs the network (``caml segment --backend``) and at which precision (``--precision``).

The choices live here, in one place, free of numpy and torch, so that
building the CLI's parser and the Slicer Logic's dependency check stay cheap;
``onnx_runtime`` runs them.
"""

from __future__ import annotations

import importlib.util

#: The runtimes that run a model's ONNX export on the CPU without PyTorch, in ``--backend auto``'s order
#: of preference, each with the module it imports (also its name in the ``device`` string). OpenVINO
#: first: on the 2-core build machine (Intel, AMX) one batch of 8 windows of the default model took
#: 0.44 s in float32 and 0.17 s in its default bfloat16, against 1.01 s with ONNX Runtime (README).
EXPORT_RUNTIMES = {"openvino": "openvino", "onnx": "onnxruntime"}
#: ``--backend``: ``auto``, PyTorch, or one of the export runtimes.
BACKENDS = ("auto", "torch") + tuple(sorted(EXPORT_RUNTIMES))
#: ``--precision``: ``auto`` is the runtime's fastest native precision (OpenVINO's own default, bfloat16
#: on CPUs with bfloat16 matrix units, float32 elsewhere; torch and ONNX Runtime run float32);
#: ``float32`` is full precision everywhere (no float16 autocast on CUDA either).
PRECISIONS = ("auto", "float32")
#: The precision torch and ONNX Runtime compute in on the CPU.
FLOAT32 = "float32"


def runtime_installed(backend: str) -> bool:
    """Whether the export runtime ``backend`` (a key of ``EXPORT_RUNTIMES``) can be imported, without
    importing it."""
    try:
        return importlib.util.find_spec(EXPORT_RUNTIMES[backend]) is not None
    except (ImportError, ValueError):
        return False


def installed_runtimes() -> tuple:
    """The export runtimes installed here, in ``auto``'s order of preference."""
    return tuple(name for name in EXPORT_RUNTIMES if runtime_installed(name))
