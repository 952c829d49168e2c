"""Type stubs for the Rust extension ``kim_appliance._native``.

The native module owns the byte hot path of a 25 MB KIM message: SHA-256 (the ``sha2`` crate),
AES-256-GCM (OpenSSL's EVP on the system's libssl, through the ``openssl`` crate), the BER
streaming of constructed OCTET STRINGs, base64 (``base64-simd``) with 76-column CRLF lines, and
SMTP/POP3 dot-stuffing. Every object is a streaming object shaped ``update(chunk) -> bytes`` /
``finalize()``. Calls on large chunks release the GIL, so callers may run them through
``trio.to_thread.run_sync`` and use both cores.

Errors: every malformed input raises :class:`NativeError` (a ``ValueError``) or one of its
subclasses, with a message that names what was wrong and the byte offset where it was found.
"""

from typing import Final

class NativeError(ValueError):
    """Malformed input or misuse of a native streaming object."""

class BerError(NativeError):
    """The BER/DER input is malformed or truncated. The message names the offset."""

class TagMismatchError(NativeError):
    """AES-GCM authentication failed: wrong key, nonce, AAD, tag, or altered ciphertext."""

class Base64Error(NativeError):
    """A character outside the base64 alphabet, bad padding or a truncated quantum."""

# --- SHA-256 ---------------------------------------------------------------------------------

class Sha256:
    """Streaming SHA-256."""

    def __init__(self, data: bytes = b"") -> None: ...
    def update(self, data: bytes) -> None: ...
    def copy(self) -> Sha256: ...
    def finalize(self) -> bytes:
        """The 32-byte digest. The object may not be updated afterwards."""

def sha256(data: bytes) -> bytes:
    """One-shot SHA-256 (releases the GIL for large inputs)."""

# --- AES-256-GCM -----------------------------------------------------------------------------

OPENSSL_VERSION: Final[str]
"""The OpenSSL release that runs AES-256-GCM (the system's libssl), e.g. "OpenSSL 3.0.17 ..."."""

class AesGcmEncryptor:
    """AES-256-GCM encryption, 32-byte key, 12-byte nonce, 16-byte tag."""

    def __init__(self, key: bytes, nonce: bytes, aad: bytes = b"") -> None: ...
    def update(self, data: bytes) -> bytes:
        """Ciphertext for ``data`` (same length)."""
    def finalize(self) -> bytes:
        """The 16-byte tag. The object may not be updated afterwards."""

class AesGcmDecryptor:
    """AES-256-GCM decryption that releases no plaintext before the tag has verified.

    ``update`` writes the plaintext to an anonymous spool file (created in ``spool_dir`` or the
    system temp dir; it has no name, so nothing is left behind after a crash). Only
    ``finalize(tag)`` with the right tag hands the plaintext out, as a :class:`Plaintext`.
    """

    def __init__(
        self, key: bytes, nonce: bytes, aad: bytes = b"", spool_dir: str | None = None
    ) -> None: ...
    def update(self, data: bytes) -> None: ...
    def finalize(self, tag: bytes) -> Plaintext:
        """Verify the tag; raise :class:`TagMismatchError` and discard the spool if it fails."""

class Plaintext:
    """Authenticated plaintext spooled to an anonymous file; a read-only binary file object."""

    @property
    def size(self) -> int: ...
    def read(self, n: int = -1) -> bytes: ...
    def readinto(self, buffer: bytearray | memoryview) -> int: ...
    def seek(self, offset: int, whence: int = 0) -> int: ...
    def tell(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Plaintext: ...
    def __exit__(self, *exc: object) -> None: ...

def gcm_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """One-shot AES-256-GCM: ciphertext then the 16-byte tag (small data: KAS blobs, tests)."""

def gcm_open(key: bytes, nonce: bytes, ciphertext_and_tag: bytes, aad: bytes = b"") -> bytes:
    """One-shot inverse of :func:`gcm_seal`; raises :class:`TagMismatchError`."""

# --- BER -------------------------------------------------------------------------------------

EVENT_START: Final[int]  # an element begins (header read)
EVENT_END: Final[int]  # an element ends (after its content, or its end-of-contents octets)
EVENT_VALUE: Final[int]  # the whole content of a primitive element (then EVENT_END follows)
EVENT_RAW: Final[int]  # the whole encoding of a captured element, header included (no END follows)
EVENT_DATA: Final[int]  # a piece of the flattened content of a string element

CLASS_UNIVERSAL: Final[int]  # 0
CLASS_APPLICATION: Final[int]  # 1
CLASS_CONTEXT: Final[int]  # 2
CLASS_PRIVATE: Final[int]  # 3

class BerEvent:
    @property
    def kind(self) -> int: ...
    @property
    def tag_class(self) -> int: ...
    @property
    def constructed(self) -> bool: ...
    @property
    def tag_number(self) -> int: ...
    @property
    def length(self) -> int | None:
        """Content length from the header; None for the indefinite form."""
    @property
    def offset(self) -> int:
        """Stream offset of the element's first header byte (START/RAW), of the data
        (VALUE/DATA), or just past the element and its end-of-contents octets (END)."""
    @property
    def depth(self) -> int:
        """Nesting depth of the element; the outermost element is depth 0."""
    @property
    def value(self) -> bytes:
        """For VALUE, RAW and DATA events; b"" otherwise."""

class BerReader:
    """A push parser for a stream of BER (DER is a subset): definite and indefinite lengths,
    constructed strings nested to any depth (up to ``max_depth``), high tag numbers.

    Every element yields START ... END. After a START the caller may call :meth:`capture` (the
    next event is one RAW event with the element's complete encoding, for small structures handed
    to asn1crypto; over ``max_capture`` bytes raises :class:`BerError`) or :meth:`flatten` (for
    a string element, primitive or constructed: the next events are DATA events carrying the
    concatenated content of every primitive segment inside it, coalesced per ``feed``, then END).
    Otherwise a primitive yields one VALUE event (its content, at most ``max_capture`` bytes) and
    a constructed element yields its children.

    ``next_event`` returns None when it needs more data. After :meth:`feed_eof`, a truncated
    element raises :class:`BerError`; so do bad lengths, EOC octets in the wrong place, a length
    running past its parent's end, and nesting deeper than ``max_depth``. Trailing bytes after
    the outermost element are left unread: :attr:`offset` tells where it ended and
    :meth:`remaining` returns them.
    """

    def __init__(self, max_depth: int = 32, max_capture: int = 16 * 1024 * 1024) -> None: ...
    def feed(self, data: bytes) -> None: ...
    def feed_eof(self) -> None: ...
    def next_event(self) -> BerEvent | None: ...
    def capture(self) -> None: ...
    def flatten(self) -> None: ...
    @property
    def offset(self) -> int:
        """Number of input bytes consumed so far."""
    @property
    def done(self) -> bool:
        """True once the outermost element has ended."""
    def remaining(self) -> bytes: ...

def ber_header(tag_class: int, constructed: bool, tag_number: int, length: int | None) -> bytes:
    """Encode identifier and length octets; ``length=None`` writes the indefinite form (0x80)."""

class OctetStringChunker:
    """Wraps a byte stream into primitive OCTET STRING segments of ``chunk_size`` bytes each
    (the last may be shorter), for the content of a constructed OCTET STRING."""

    def __init__(self, chunk_size: int = 65536) -> None: ...
    def update(self, data: bytes) -> bytes: ...
    def finalize(self) -> bytes:
        """The last, shorter segment (no end-of-contents octets: the caller writes those)."""

# --- base64 ----------------------------------------------------------------------------------

class Base64Encoder:
    """Base64 (RFC 4648 alphabet, padded) in lines of ``line_length`` characters ending CRLF."""

    def __init__(self, line_length: int = 76) -> None: ...
    def update(self, data: bytes) -> bytes: ...
    def finalize(self) -> bytes:
        """The rest; the output always ends with CRLF unless it is empty."""

class Base64Decoder:
    """Base64 decoding that skips CR, LF, space and tab; anything else outside the alphabet,
    data after padding, or a truncated final quantum raises :class:`Base64Error` with the offset."""

    def __init__(self) -> None: ...
    def update(self, data: bytes) -> bytes: ...
    def finalize(self) -> bytes: ...

# --- SMTP DATA / POP3 multi-line dot-stuffing ------------------------------------------------

class DotStuffer:
    """Turns a message into the body of SMTP DATA or a POP3 multi-line response: a '.' at the
    start of a line is doubled, the body is made to end with CRLF, and ``finalize`` appends the
    terminating '.' CRLF. Line ends are not altered (a bare LF stays a bare LF)."""

    def __init__(self) -> None: ...
    def update(self, data: bytes) -> bytes: ...
    def finalize(self) -> bytes: ...

class DotUnstuffer:
    """Reads the body of SMTP DATA or a POP3 multi-line response until CRLF '.' CRLF.

    Only that exact sequence ends the body (a line start is only after CRLF), so a bare LF
    ('\\n.\\r\\n', '\\n.\\n') never ends it: no SMTP smuggling. Leading dots are removed.
    ``feed`` returns the unstuffed bytes available so far; once :attr:`done`, the bytes after
    the terminator are in :meth:`take_rest`. Bare CR and bare LF are counted so that a server
    may refuse such messages.
    """

    def __init__(self) -> None: ...
    def feed(self, data: bytes) -> bytes: ...
    @property
    def done(self) -> bool: ...
    def take_rest(self) -> bytes: ...
    @property
    def bare_lf(self) -> int: ...
    @property
    def bare_cr(self) -> int: ...
    @property
    def longest_line(self) -> int:
        """Length of the longest line seen, without its CRLF (for line-length limits)."""
