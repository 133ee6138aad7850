"""The inference engine: ``InferenceCore.step(frame, mask=None)`` with its parts (the objects followed and
their references, the bounded memory bank), and propagation of keyframes through a video both ways.
"""
