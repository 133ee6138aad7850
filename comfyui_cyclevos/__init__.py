"""cyclevos: semi-supervised video object segmentation with a cycle-consistent STM network
(Li et al., "Delving into the Cyclic Mechanism in Semi-supervised Video Object Segmentation", NeurIPS 2020).

Layers, each importing only from the ones above it in this list:
- ``errors``, ``config``, ``filters``: one-line user errors, typed hyperparameters, small image filters;
- ``runtime``: device, precision and allocator policy;
- ``model``: the stateless network, its parts, losses and checkpoints;
- ``cycle``: the paper's uses of the cycle (gradient correction, confidence, cycle-ERF, adaptation);
- ``inference``: the engine (``InferenceCore``) and propagation of keyframes through a video;
- ``media``: frames, masks, palette PNGs, videos, overlays and edge controls;
- ``training``, ``evaluation``: offline training and DAVIS scoring;
- ``runner``: whole jobs (a video into a folder of masks); ``cli``: the ``cyclevos`` command.

The library never imports ComfyUI; the nodes in ``nodes/`` adapt its types. Importing this package does
no work: modules are imported where they are used.
"""

__version__ = "0.1.0"
