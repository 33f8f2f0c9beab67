"""Board descriptions, one YAML file per board (loaded by ``hbmforge.boards``)."""
