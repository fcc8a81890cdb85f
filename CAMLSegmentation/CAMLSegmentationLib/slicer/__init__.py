"""What the Slicer module needs beyond the engine: the engine as a child job, the MRML bridge,
and adding the module to a Slicer installation. Imports slicer and vtk only inside functions."""
