"""Typed errors of the export pipeline; the CLI prints them and exits non-zero."""


class ExportError(Exception):
    """Base class: everything the pipeline raises on purpose."""


class DataError(ExportError):
    """The corpus is missing, empty or malformed (names the file and line)."""

    def __init__(self, path, reason, line=None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {reason}")
        self.path, self.line, self.reason = path, line, reason


class ConfigError(ExportError):
    """A config file is unreadable, has unknown keys or out-of-range values."""


class ParityError(ExportError):
    """ONNX Runtime disagrees with PyTorch beyond the stated tolerance."""

    def __init__(self, failures):
        super().__init__("parity check failed:\n  " + "\n  ".join(failures))
        self.failures = failures
