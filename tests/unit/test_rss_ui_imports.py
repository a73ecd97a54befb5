"""The UI's imports keep OpenSSL out of the agent's process (``tui.asyncio_without_tls``):
checked in real child processes beside a control import of Textual alone, so the test can
fail; TLS stays available to whatever imports ``ssl`` afterwards."""

from __future__ import annotations

from tests.helpers import run_python

_OPENSSL_MAPPED = "any('libssl' in l or 'libcrypto' in l for l in open('/proc/self/maps'))"


def _child(code: str) -> str:
    return run_python(code).stdout.strip()


def test_the_ui_maps_no_openssl_where_textual_alone_does():
    assert _child(f"import textual.app; print({_OPENSSL_MAPPED})") == "True"  # control
    assert _child(f"import tui.app, sys; print({_OPENSSL_MAPPED}, 'ssl' in sys.modules)") == (
        "False False"
    )


def test_after_the_ui_is_imported_tls_and_the_event_loop_still_work():
    out = _child(
        """
        import tui.app, asyncio
        async def main():
            await asyncio.sleep(0.01)
            return "loop"
        print(asyncio.run(main()))
        import ssl  # an exporter over https, later
        print(ssl.create_default_context().protocol.name)
        """
    )
    assert out.splitlines() == ["loop", "PROTOCOL_TLS_CLIENT"]


def test_asyncio_keeps_tls_when_ssl_was_imported_before_the_ui():
    out = _child("import ssl, tui.app, asyncio.sslproto as p; print(p.ssl is ssl)")
    assert out == "True"
