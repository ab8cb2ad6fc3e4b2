"""The `lstmbench` commands, one module per verb; harness.cli builds the parser from them."""
