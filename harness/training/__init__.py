"""Training on real text: corpora, the training loop (`train`, `evaluate`, `sample`) and the
quality matrix (`run --matrix quality`)."""
