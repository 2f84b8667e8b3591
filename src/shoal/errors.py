"""The one error tree of shoal.

Every error a caller can act on is a `ShoalError` subclass with a message that says what
happened and, where there is one, what to do about it. Layers raise these and nothing looser.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base of every error shoal raises on purpose."""


class NotFound(ShoalError):
    """The named object (or device, or key) does not exist."""


class NoSpace(ShoalError):
    """Not enough free blocks: nothing was written and nothing was taken."""


class IntegrityError(ShoalError):
    """Stored bytes do not match their checksum; the corrupt bytes are never returned."""


class FormatError(ShoalError):
    """A device or key store that is unformatted, of another format, or of another version."""


class DeviceBusy(ShoalError):
    """The device is already open in another process."""


class Forbidden(ShoalError):
    """The operation is not allowed on this object (for instance it is permanent)."""


class InvalidArgument(ShoalError):
    """A request that cannot be carried out as asked (bad offset, bad id, ...)."""


class Conflict(ShoalError):
    """The object changed while the operation was under way; retrying may succeed."""


class StoreFailed(ShoalError):
    """A disk flush failed: the store refuses further writes until it is reopened."""


class StaleMap(ShoalError):
    """The request was made with an older cluster map than the server's: refresh, retry."""

    def __init__(self, message: str, epoch: int = 0) -> None:
        super().__init__(message)
        self.epoch = epoch


class NotAuthenticated(ShoalError):
    """Unknown key, wrong secret, a ticket that is forged or expired, or no ticket at all."""


class Superseded(ShoalError):
    """A replicated change older than the copy it was sent to: the copy already has a newer
    version (or this one), so there is nothing to do."""

    def __init__(self, message: str, version: int = 0) -> None:
        super().__init__(message)
        self.version = version


class Unavailable(ShoalError):
    """The cluster cannot serve this now (too few replicas up, a replica unreachable, a copy
    still recovering): retry, or try another replica. A write refused before it started
    changed nothing; one that reached some of its replicas but not all is not acknowledged and
    may still be made by recovery (like a write that timed out): retrying it is safe."""


class OutcomeUnknown(ShoalError):
    """A change was sent but its answer was lost (the connection broke, or no answer came in
    time): it may or may not have been made. Not retried by the client where a second try
    could undo what another writer did meanwhile; the caller decides (a new PUT is safe)."""
