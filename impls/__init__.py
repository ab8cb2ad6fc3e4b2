"""lstmbench implementations: the contract in code (config, params, interface), the NumPy
reference and one module per framework backend (`<framework>_impl.py`)."""
