"""cyclevos: semi-supervised video object segmentation with a cycle-consistent STM network
(Li et al., "Delving into the Cyclic Mechanism in Semi-supervised Video Object Segmentation", NeurIPS 2020).

The library never imports ComfyUI; the nodes in ``nodes/`` adapt its types. Importing this package does
no work: modules are imported where they are used.
"""

__version__ = "0.1.0"
