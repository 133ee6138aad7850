"""``python -m comfyui_cyclevos.cli``."""

from .app import main

main()
