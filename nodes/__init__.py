"""ComfyUI nodes of cyclevos; the library they call is the sibling package ``comfyui_cyclevos``."""
from .cyclevos_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
