"""Every error a user of the library or the command line can cause, in one place.

The command line turns any :class:`MatryoshkaError` into one ``error: ...`` line and a
non-zero exit code; each message says what is wrong and how to fix it.
"""

from __future__ import annotations


class MatryoshkaError(Exception):
    """Base class of the errors this package raises on purpose."""


class InputError(MatryoshkaError, ValueError):
    """Input that cannot be used as given (arrays, files, parameters); the message says how to fix it."""


class AdaptorFileError(InputError):
    """The path is not a readable adaptor folder of a supported format version."""


class FunnelIndexError(InputError):
    """A funnel index table that cannot be used as asked: not written by ``index build``, built with a
    different adaptor, or of an unsupported format version."""


class NotFittedError(MatryoshkaError, RuntimeError):
    """The adaptor has not been fitted (or loaded) yet."""


class UpstreamError(MatryoshkaError, RuntimeError):
    """The embedding endpoint refused or failed; ``status`` is its HTTP status (None: no answer)."""

    def __init__(self, status: int | None, message: str):
        super().__init__(message)
        self.status = status


class TrainingDivergedWarning(UserWarning):
    """Training stopped early because the loss or weights became non-finite or validation collapsed;
    the best weights seen were restored (see ``fit_summary_[stage]["diverged"]``)."""


class HeldOutEvidenceWarning(UserWarning):
    """A supervised fit with ``query_groups`` holds out too few groups for its checks (the fallback, the
    ``"auto"`` shrink, ``use_queries="validated"``) ever to find a gain beyond noise; the message says
    what the fit will therefore keep and how to hold out more."""
