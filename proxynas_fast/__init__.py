"""proxynas_fast: neural architecture search on proxy data.

Pipeline: data -> scoring (entropy of a pretrained scorer) -> selection (proxy subset)
-> search (DARTS / PC-DARTS) -> training of the searched cell from scratch.
"""
__version__ = "0.1.0"
