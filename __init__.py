"""cyclevos for ComfyUI: video object segmentation nodes (category "cyclevos").

ComfyUI imports this file from custom_nodes/<folder>/ under a name derived from the path (the folder is
not on sys.path), so everything is imported relatively. Nothing runs here besides that import.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"  # web/docs/<NodeKey>.md: each node's help page in the frontend

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
