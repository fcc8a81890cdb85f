"""CAMLSegmentation engine: CAML network, semi-supervised training, inference and I/O.

Plain Python on torch, numpy, SimpleITK and scipy (h5py for .h5 files only). Never imports slicer, qt,
ctk or vtk at module level, so it runs headless and inside Slicer alike.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The folder holding this package: the Slicer module's folder (``CAMLSegmentation/``), where
#: ``CAMLSegmentation.py`` and, in an installed extension, ``Resources/`` are.
MODULE_DIR = Path(__file__).resolve().parent.parent
