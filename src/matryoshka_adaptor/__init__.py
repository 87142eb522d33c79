"""matryoshka-adaptor: shrink frozen embeddings with the Matryoshka-Adaptor (Yoon et al., EMNLP 2024).

Importing the package does not import torch: applying a fitted adaptor needs numpy only.
"""

from ._version import __version__
from .estimator import MatryoshkaAdaptor, NotFittedError
from .persistence import AdaptorFileError
from .validation import InputError

__all__ = ["MatryoshkaAdaptor", "InputError", "AdaptorFileError", "NotFittedError", "__version__"]
