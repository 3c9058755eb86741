"""Storage errors. Each message is one line naming the file and what is wrong: the server prints it and
refuses to start rather than repairing anything silently."""


class StorageError(Exception):
    pass


class CorruptionError(StorageError):
    """Data on disk failed its checksum."""


class ForeignDataError(StorageError):
    """The data directory belongs to another node or cluster, or to an unknown format version."""


class TruncatedError(CorruptionError):
    """data.mdb is shorter than its own meta page says, or empty where data was kept."""


class DataDirInUse(StorageError):
    """Another process holds this data directory."""


class CommandFailed(ValueError):
    """A committed command that cannot be applied (the same on every node): it fails alone, with this as
    its result, and its entry still counts as applied."""
