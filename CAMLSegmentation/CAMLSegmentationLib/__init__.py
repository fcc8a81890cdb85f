"""CAMLSegmentation engine: CAML network, semi-supervised training, inference and I/O.

Plain Python on torch, numpy, SimpleITK and scipy (h5py for .h5 files only). Never imports slicer, qt,
ctk or vtk at module level, so it runs headless and inside Slicer alike.
"""

__version__ = "0.1.0"
