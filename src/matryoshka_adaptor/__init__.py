"""matryoshka-adaptor: shrink frozen embeddings with the Matryoshka-Adaptor (Yoon et al., EMNLP 2024).

Importing the package does not import torch: applying a fitted adaptor needs numpy only.
"""

from ._version import __version__
from .errors import AdaptorFileError, InputError, MatryoshkaError, NotFittedError, UpstreamError
from .estimator import MatryoshkaAdaptor

__all__ = ["MatryoshkaAdaptor", "MatryoshkaError", "InputError", "AdaptorFileError", "NotFittedError",
           "UpstreamError", "__version__"]
