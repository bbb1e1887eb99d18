"""Developer tooling that never ships: the local Tansu broker, test certificates and `make demo`.

Kept out of the ``streamworker`` package (and so out of the wheel and the image); tests, integration,
bench and the Makefile import it from the checkout's root.
"""
