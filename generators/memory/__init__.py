"""The memory family's engine: a tile cache in front of host/DDR memory and an oblivious map.

* :mod:`.chacha`, :mod:`.poly1305`: the ChaCha20 block function and the Poly1305 MAC (RFC 8439);
* :mod:`.cache`: the set-associative tile cache (tags on chip, lines in HBM);
* :mod:`.omap`: the oblivious map unit (encrypted bins in host memory, trusted state in HBM);
* :mod:`.engine`: the engine of the contract (``hbmforge.engines.memory``) around both.
"""
