"""Frames and masks in and out: lazy frame sources (video files, image folders), mask files of object ids,
the DAVIS palette and layout, palette PNGs and mp4 writers that appear only when complete, overlays,
run previews, and edge controls on written masks.
"""
