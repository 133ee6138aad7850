"""Offline training (paper Eq. 2-4): clips sampled from DAVIS-layout videos and from static images, and the
cyclic training loop.
"""
