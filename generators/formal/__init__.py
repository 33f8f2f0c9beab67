"""Formal properties of the generated RTL (docs/verification.md), checked with SymbiYosys.

Verification only: nothing here is part of a generated kernel. :mod:`.axi4` and
:mod:`.control` hold the property sets, :mod:`.shell` the harnesses of the shell's ports
and control slave, :mod:`.cases` the list of proofs for a design, :mod:`.run` the runner.
"""
