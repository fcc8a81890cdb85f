"""What the Slicer module needs beyond the engine.

- ``framework``: the application's Qt and scripted-module classes, with stand-ins outside it;
  the module's name, resource paths and constants;
- ``parameters``: the parameter node; ``runs``: the background child runs the panel follows;
- ``logic``: ``CAMLSegmentationLogic`` (and ``al_logic``, its active-learning part);
- ``mrml_bridge`` and ``al_mrml``: volume node <-> Volume, mask <-> segment, cohort cases in a scene;
- ``jobs``: the engine as a child job; ``install``: adding the module to a Slicer installation.

``jobs`` and ``install`` never import slicer; ``mrml_bridge`` and ``al_mrml`` import slicer and
vtk inside functions; the Logic modules import slicer at the top (they run only where it is:
the application, or the ``slicer-core`` wheels). None of them imports torch.
"""
