"""Textual runs on asyncio, and asyncio imports ``ssl`` for TLS streams, which maps OpenSSL
(libssl + libcrypto: ~6.5 MB resident, ~3 MB of it anonymous) into the agent's process. The
UI never opens a TLS connection through asyncio, so asyncio is imported here with ``ssl``
refused: it then works as on a Python built without OpenSSL (asyncio's own fallback), and the
refusal is lifted at once, so anything that does need TLS later (an OTLP exporter over https:
requests and urllib3 are not asyncio; gRPC has its own TLS) imports the real ``ssl``. Only
asyncio's TLS streams are unavailable in this process. Nothing changes when asyncio or ssl is
already imported."""

from __future__ import annotations

import sys

#: The asyncio modules that bind ``ssl`` when imported.
_ASYNCIO_TLS_USERS = (
    "asyncio",
    "asyncio.base_events",
    "asyncio.selector_events",
    "asyncio.sslproto",
    "asyncio.unix_events",
)


def import_asyncio_without_tls() -> bool:
    """Import asyncio without OpenSSL; False when it or ssl was imported already."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]  # "import ssl" raises ImportError
    try:
        for name in _ASYNCIO_TLS_USERS:
            __import__(name)
    finally:
        if sys.modules.get("ssl", ...) is None:
            del sys.modules["ssl"]
    return True
