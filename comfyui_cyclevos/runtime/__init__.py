"""Where and how the network runs: the compute device, the precision policy (autocast and weights cast
once), and glibc's allocator settings for processes cyclevos owns. Knows nothing of the network's layers.
"""
