"""Results files of `lstmbench run`: their schema with its versions and migrations, where and
how they are written, and the one model of a run that compare, report and load_dataframe read."""
