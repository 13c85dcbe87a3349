"""The errors every data source raises when its data is missing, damaged or unlabelled.

They live apart from the sources so that loading one source (IDX files, an
image folder) does not import another (tfds) only to raise its errors.
"""


class DataNotFoundError(ValueError):
    """A data set that is not on this machine and could not be prepared."""


class DamagedDataError(DataNotFoundError):
    """A prepared tfds data set whose record files are missing or damaged."""


class UnlabelledDataError(DataNotFoundError):
    """A tfds data set whose train split, or every test candidate, lacks labels (label -1)."""
