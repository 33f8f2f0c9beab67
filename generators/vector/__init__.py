"""Vector engine generator: norms, activations, SwiGLU, residual/bias adds, RoPE and requantization.

:class:`~.engine.VectorEngine` runs VECTOR descriptors (:mod:`hbmforge.engines.vector`) bit-exactly
with :func:`hbmforge.numerics.vector.run_vector`; it plugs into the kernel through its
``EngineSignature`` and the family's ``Channels`` only (docs/engines/vector.md).
"""
