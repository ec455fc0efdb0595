"""Errors that stop a labeling round on purpose.

Step Functions names a Lambda error after its exception class, so the state machine can tell these
(bad input or a decision: retrying cannot help) from transient failures (which it retries with backoff).
"""

from __future__ import annotations


class LabelingError(Exception):
    """Base class: an error whose message tells the labeling team what is wrong and where."""


class ConfigurationError(LabelingError):
    """The deployment's settings cannot work (e.g. a region without Ground Truth's built-in functions)."""


class ConcurrentRoundError(LabelingError):
    """Another labeling round is still running; two rounds would send the same images twice."""


class ManifestError(LabelingError):
    """A Ground Truth output manifest is missing, empty or malformed; nothing was written."""


class NoLabelsError(LabelingError):
    """A labeling job finished without a single usable answer (every task expired or was declined)."""


class SeedFileError(LabelingError):
    """A seed file cannot be read at all (wrong format, unreadable); row-level problems are reported instead."""


class LabelStudioUnavailable(LabelingError):
    """Label Studio did not answer (refused, timed out, 5xx): a retry may succeed."""


class LabelStudioAuthError(ConfigurationError):
    """Label Studio refused the API token (401/403): retrying cannot help."""


class LabelStudioNotFound(LabelingError):
    """A Label Studio object does not exist (any more): e.g. a task or project deleted by hand."""


class LabelStudioRequestError(LabelingError):
    """Label Studio rejected a request (4xx other than 401/403/404)."""


class LabelStudioProjectError(LabelingError):
    """A Label Studio project of the round is not as the round made it (edited by hand); nothing was written."""


NON_RETRYABLE_ERRORS: tuple[str, ...] = tuple(
    error.__name__
    for error in (
        ConfigurationError,
        ConcurrentRoundError,
        ManifestError,
        NoLabelsError,
        SeedFileError,
        LabelStudioAuthError,
        LabelStudioNotFound,
        LabelStudioRequestError,
        LabelStudioProjectError,
    )
)
"""Error names the state machine fails on at once (retrying the same input gives the same answer)."""
