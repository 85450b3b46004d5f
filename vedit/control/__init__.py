"""Structure guidance: ControlNets fed by annotators or the user's own control clips.

- :mod:`vedit.control.sources`: what ``--control`` and ``--controlnet`` name, checked before any heavy work, and
  the :class:`Annotator` base class (torch-free);
- :mod:`vedit.control.frames`: the control frames of a run, read from control clips or made by annotators and
  cached beside the inversion;
- :mod:`vedit.control.controlnets`: ControlNets loaded, recognised and fingerprinted;
- :mod:`vedit.method.control`: the ControlNets acting inside every UNet pass.
"""
