"""Between the two sides: the snapshot file format and signing, the local and remote stores.

``format`` is what both sides share; ``store`` is the local folder; ``remote`` (fsspec/S3)
is imported only when a URL is used.
"""

from __future__ import annotations

from .format import Header, Keyring, Placeholder, Snapshot, read_header, read_header_file, verify

__all__ = [
    "Header",
    "Keyring",
    "Placeholder",
    "Snapshot",
    "read_header",
    "read_header_file",
    "verify",
]
