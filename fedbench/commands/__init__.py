"""One module per command; `fedbench.cli` only wires them."""
