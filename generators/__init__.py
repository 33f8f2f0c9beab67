"""Amaranth generators: the kernel shell and the engines (imported as ``hbmforge.generators``)."""
