"""Environments: which interpreter runs each backend and what its worker's environment holds
(interpreters), building the environments the harness makes itself (setup), this machine (host:
CPUs, memory, its GPU, what it is, the code it runs), and variants: a participant's other
interpreter, source tree or environment (variants)."""
