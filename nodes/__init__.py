"""ComfyUI nodes of cyclevos (classic node API, category ``cyclevos``): thin adapters from ComfyUI's types to
the library ``comfyui_cyclevos`` and back, one module per concern. IMAGE is (B, H, W, 3) float32 in 0..1 on
the CPU and MASK (B, H, W) float32."""

from .cycle import CycleVOSConfidence, CycleVOSCycleERF, CycleVOSGradientCorrect
from .model import CycleVOSLoadModel
from .objects import CycleVOSFirstFrameMask, CycleVOSKeyframe, CycleVOSRefineEdges, CycleVOSSelectObject
from .output import CycleVOSOverlay, CycleVOSSaveMasks
from .propagation import CycleVOSPropagate
from .video import CycleVOSLoadVideo, CycleVOSLoadVideoFromFolder

NODE_CLASS_MAPPINGS = {
    "CycleVOSLoadVideo": CycleVOSLoadVideo,
    "CycleVOSLoadVideoFromFolder": CycleVOSLoadVideoFromFolder,
    "CycleVOSFirstFrameMask": CycleVOSFirstFrameMask,
    "CycleVOSKeyframe": CycleVOSKeyframe,
    "CycleVOSLoadModel": CycleVOSLoadModel,
    "CycleVOSPropagate": CycleVOSPropagate,
    "CycleVOSConfidence": CycleVOSConfidence,
    "CycleVOSRefineEdges": CycleVOSRefineEdges,
    "CycleVOSGradientCorrect": CycleVOSGradientCorrect,
    "CycleVOSCycleERF": CycleVOSCycleERF,
    "CycleVOSSelectObject": CycleVOSSelectObject,
    "CycleVOSOverlay": CycleVOSOverlay,
    "CycleVOSSaveMasks": CycleVOSSaveMasks,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CycleVOSLoadVideo": "CycleVOS Load Video",
    "CycleVOSLoadVideoFromFolder": "CycleVOS Load Video From Folder",
    "CycleVOSFirstFrameMask": "CycleVOS First Frame Mask",
    "CycleVOSKeyframe": "CycleVOS Keyframe",
    "CycleVOSLoadModel": "CycleVOS Load Model",
    "CycleVOSPropagate": "CycleVOS Propagate",
    "CycleVOSConfidence": "CycleVOS Confidence",
    "CycleVOSRefineEdges": "CycleVOS Refine Edges",
    "CycleVOSGradientCorrect": "CycleVOS Gradient Correct",
    "CycleVOSCycleERF": "CycleVOS Cycle-ERF",
    "CycleVOSSelectObject": "CycleVOS Select Object",
    "CycleVOSOverlay": "CycleVOS Overlay",
    "CycleVOSSaveMasks": "CycleVOS Save Masks",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
