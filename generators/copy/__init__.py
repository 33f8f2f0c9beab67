"""COPY/FILL engine generator: move a buffer between any two memory ports, or fill one.

:class:`~.engine.CopyEngine` runs COPY descriptors (:mod:`hbmforge.engines.copy`) bit-exactly
with :func:`hbmforge.numerics.copy.run_copy`. It is the engine contract's third family: it
plugs into the kernel through ``EngineSignature`` and the family's ``Channels`` only.
"""
