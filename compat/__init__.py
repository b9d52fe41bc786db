"""compat: upgrade the embedding model behind a retrieval system without backfilling the gallery.

Import the pieces from their subpackages, e.g. ``from compat.retrieval import RetrievalEvaluator``
or ``from compat.compatibility import evaluate_chain``; this top level stays light so that the
command line starts fast.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
