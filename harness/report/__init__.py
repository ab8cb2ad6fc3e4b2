"""`lstmbench report` and the run's console output: tables, plots, the Markdown and HTML page."""
