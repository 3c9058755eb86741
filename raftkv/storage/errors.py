"""Storage errors. Each message is one line naming the file and what is wrong: the server prints it and
refuses to start rather than repairing anything silently."""


class StorageError(Exception):
    pass


class CorruptionError(StorageError):
    """Data on disk failed its checksum."""


class ForeignDataError(StorageError):
    """The data directory belongs to another node or cluster, or to an unknown format version."""
