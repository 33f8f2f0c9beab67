"""Hand-kept HDL, Verilator waivers and the jinja2 templates that package a generated design."""
