"""The tools (imported as ``hbmforge.flows``): emit, package, estimate, run, regression and the CLI.

Flows sit on top of the layers: they combine the contract (``hbmforge``), the generators,
the simulation and the host runtime. Nothing below imports them, except the sim backend's
``open_device(config)``, which calls the design flow lazily.
"""
