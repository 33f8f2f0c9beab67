"""Device backends, imported lazily by ``hbmforge.host.open_device``.

Each backend module subclasses :class:`hbmforge.host.device.Device`, calls
``check_identity()`` at the end of its constructor, and exposes
``open_device(target, *, build_dir=None, **options) -> Device`` for the
backends opened by name (``pynq``, ``xrt``); ``target`` is what the user passed
to ``hbmforge.host.open_device`` (a config, a config path or a build directory
holding manifest.json and the bitstream/xclbin).
"""
