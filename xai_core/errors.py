"""The one error hierarchy of xai_core: every error a user can cause or fix is an `XaiError`.

The CLI maps `XaiError` to exit code 2 with its one-line message; anything else is a bug and surfaces as one.
Each class also derives from the built-in exception it replaces, so callers that caught those keep working.
"""

from __future__ import annotations


class XaiError(Exception):
    """Something the user can fix; the message says what is wrong and what to do."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class InputError(XaiError, ValueError):
    """A value, file or parameter given by the user that cannot be used."""


class ParameterError(InputError, TypeError):
    """An explainer, metric or command parameter that does not exist or has an invalid value."""


class UnknownNameError(XaiError, KeyError):
    """A name (model, method, metric, case, benchmark) that is not registered; the message lists the known ones."""


class TargetError(InputError, LookupError):
    """A target label (index or name) the model does not have."""


class ModelError(XaiError, RuntimeError):
    """A model that cannot be loaded or run; the message says why and what to do."""


class MissingWeightsError(ModelError):
    """The weights file of a model is not on this machine."""


class StoreError(XaiError, RuntimeError):
    """The case store cannot be opened or written; the message says what to do."""


class PacsError(XaiError, RuntimeError):
    """The PACS (DICOMweb) cannot be reached, refuses the credentials, lacks an object or answers with an error."""
