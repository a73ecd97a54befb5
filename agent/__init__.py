"""accelwatch agent: the runtime core (model, catalog, store, sampler, CLI).

Importing the agent keeps OpenSSL's libcrypto out of the process unless something needs TLS:
DuckDB's Python package imports ``secrets`` (hence ``hmac`` and ``hashlib``), whose OpenSSL
backend ``_hashlib`` maps libcrypto (~3.5 MB resident) for digests the agent never computes.
Without it ``hashlib`` uses Python's own md5/sha1/sha2/sha3/blake2 (the same digests); ``ssl``
loads OpenSSL itself when an exporter speaks TLS. Nothing changes when ``_hashlib`` is already
imported.
"""

import sys

sys.modules.setdefault("_hashlib", None)  # type: ignore[arg-type]

__version__ = "0.1.0"
