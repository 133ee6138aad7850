"""User-facing errors: each carries a one-line message naming the problem and the fix."""


class CycleVOSError(Exception):
    """Base class; the command line prints the message alone and exits with code 2."""


class InputError(CycleVOSError):
    """A bad video, mask, folder or option given by the user."""


class WeightsError(CycleVOSError):
    """A missing or incompatible checkpoint."""
