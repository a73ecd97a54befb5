"""Textual terminal UI over the agent's reader interface."""

from tui.asyncio_without_tls import import_asyncio_without_tls

import_asyncio_without_tls()  # before Textual imports asyncio (and with it OpenSSL)
