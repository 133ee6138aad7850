"""The stateless STM-cycle network (paper §3.1) and what defines it: the encoders (``backbones``), the fused
memory encoder, the memory read, the decoder, soft aggregation, the mask loss of Eq. 4, the geometry of
its input, and checkpoints (load, save, convert the released STM weights). No inference state lives here.
"""
