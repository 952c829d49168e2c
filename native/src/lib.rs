//! kim-appliance native hot path. This file holds only the pyo3 glue: classes and functions that
//! convert arguments, release the GIL for large buffers, and map the one `Error` enum to Python
//! exceptions in one place. The work itself is in the pure-Rust modules, which must never import
//! pyo3 (so `cargo test` runs without Python). The cipher, hash and base64 kernels are those of
//! maintained libraries (OpenSSL's EVP, `sha2`, `base64-simd`); no module here may hold its own.
pub mod base64;
pub mod ber;
#[cfg(feature = "bench-candidates")]
pub mod candidates;
pub mod dot;
pub mod error;
pub mod gcm;
pub mod sha;
pub mod spool;

#[cfg(feature = "pyo3")]
mod glue {
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};

    use pyo3::buffer::PyBuffer;
    use pyo3::create_exception;
    use pyo3::exceptions::{PyOSError, PyValueError};
    use pyo3::ffi;
    use pyo3::prelude::*;
    use pyo3::pybacked::PyBackedBytes;
    use pyo3::types::PyBytes;

    use crate::error::Error;
    use crate::{base64, ber, dot, gcm, sha};

    /// Buffers larger than this are processed with the GIL released.
    const DETACH_THRESHOLD: usize = 64 * 1024;

    create_exception!(
        kim_appliance._native,
        NativeError,
        PyValueError,
        "Malformed input or misuse of a native streaming object."
    );
    create_exception!(
        kim_appliance._native,
        BerError,
        NativeError,
        "The BER/DER input is malformed or truncated."
    );
    create_exception!(
        kim_appliance._native,
        TagMismatchError,
        NativeError,
        "AES-GCM authentication failed."
    );
    create_exception!(
        kim_appliance._native,
        Base64Error,
        NativeError,
        "Malformed base64."
    );

    /// The one place where Rust errors become Python exceptions.
    impl From<Error> for PyErr {
        fn from(e: Error) -> PyErr {
            let msg = e.to_string();
            match e {
                Error::Usage(_) => NativeError::new_err(msg),
                Error::Ber { .. } => BerError::new_err(msg),
                Error::TagMismatch => TagMismatchError::new_err(msg),
                Error::Base64 { .. } => Base64Error::new_err(msg),
                Error::Io(_) => PyOSError::new_err(msg),
                Error::Crypto(_) => NativeError::new_err(msg),
            }
        }
    }

    fn finished(what: &str) -> PyErr {
        NativeError::new_err(format!("{what}: already finalized, cannot be used again"))
    }

    /// Run `f` with the GIL released when the buffer is large.
    fn maybe_detach<T: Send, F: Send + FnOnce() -> T>(py: Python<'_>, n: usize, f: F) -> T {
        if n > DETACH_THRESHOLD {
            py.detach(f)
        } else {
            f()
        }
    }

    fn bytes_out<'py>(py: Python<'py>, v: Vec<u8>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &v)
    }

    /// A new bytes object of exactly `len` bytes, written by `fill` straight into the object's
    /// buffer (no zero-fill pass, no copy), with the GIL released for large buffers. `fill` must
    /// write every byte before reading any (the buffer starts uninitialised) and returns how many
    /// it wrote: anything but `len` is an error, so no unwritten byte is ever handed out. Only
    /// the public CPython API is used (`PyBytes_FromStringAndSize(NULL, len)` is its documented
    /// way to build a bytes object in place); callers size the output exactly, so it is never
    /// resized. Measured against pyo3's `PyBytes::new_with`, whose zero-fill pass made GCM
    /// encryption 6 % and base64 encoding 14 % slower through the Python API.
    fn bytes_exact<'py, F>(py: Python<'py>, len: usize, fill: F) -> PyResult<Bound<'py, PyBytes>>
    where
        F: Send + FnOnce(&mut [u8]) -> Result<usize, Error>,
    {
        // SAFETY: with NULL contents CPython returns a new bytes object, owned by us alone until
        // returned (only len == 0 gives the shared empty singleton, and then nothing is
        // written); its buffer holds `len` bytes plus the trailing NUL that CPython keeps.
        unsafe {
            let obj = Bound::from_owned_ptr_or_err(
                py,
                ffi::PyBytes_FromStringAndSize(std::ptr::null(), len as ffi::Py_ssize_t),
            )?;
            let buf = ffi::PyBytes_AsString(obj.as_ptr()) as usize;
            let written = maybe_detach(py, len, move || {
                let out = std::slice::from_raw_parts_mut(buf as *mut u8, len);
                fill(out)
            })?;
            if written != len {
                return Err(NativeError::new_err(format!(
                    "internal: {written} bytes written where {len} were announced"
                )));
            }
            Ok(obj.cast_into_unchecked())
        }
    }

    // --- SHA-256 ------------------------------------------------------------------------------

    #[pyclass(module = "kim_appliance._native")]
    struct Sha256 {
        inner: Option<sha::Sha256>,
    }

    #[pymethods]
    impl Sha256 {
        #[new]
        #[pyo3(signature = (data = None))]
        fn new(py: Python<'_>, data: Option<PyBackedBytes>) -> Self {
            let mut s = sha::Sha256::new();
            if let Some(d) = data {
                maybe_detach(py, d.len(), || s.update(&d));
            }
            Sha256 { inner: Some(s) }
        }

        fn update(&mut self, py: Python<'_>, data: PyBackedBytes) -> PyResult<()> {
            let s = self.inner.as_mut().ok_or_else(|| finished("Sha256"))?;
            maybe_detach(py, data.len(), || s.update(&data));
            Ok(())
        }

        fn copy(&self) -> PyResult<Sha256> {
            let s = self.inner.as_ref().ok_or_else(|| finished("Sha256"))?;
            Ok(Sha256 {
                inner: Some(s.clone()),
            })
        }

        fn finalize<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
            let s = self.inner.take().ok_or_else(|| finished("Sha256"))?;
            Ok(PyBytes::new(py, &s.finalize()))
        }
    }

    #[pyfunction]
    fn sha256<'py>(py: Python<'py>, data: PyBackedBytes) -> Bound<'py, PyBytes> {
        let d = maybe_detach(py, data.len(), || sha::sha256(&data));
        PyBytes::new(py, &d)
    }

    // --- AES-256-GCM --------------------------------------------------------------------------

    #[pyclass(module = "kim_appliance._native")]
    struct AesGcmEncryptor {
        inner: Option<gcm::Encryptor>,
    }

    #[pymethods]
    impl AesGcmEncryptor {
        #[new]
        #[pyo3(signature = (key, nonce, aad = None))]
        fn new(key: &[u8], nonce: &[u8], aad: Option<PyBackedBytes>) -> PyResult<Self> {
            let aad: &[u8] = aad.as_deref().unwrap_or(b"");
            Ok(AesGcmEncryptor {
                inner: Some(gcm::Encryptor::new(key, nonce, aad)?),
            })
        }

        fn update<'py>(
            &mut self,
            py: Python<'py>,
            data: PyBackedBytes,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let g = self
                .inner
                .as_mut()
                .ok_or_else(|| finished("AesGcmEncryptor"))?;
            bytes_exact(py, data.len(), |out| {
                g.update(&data, out)?;
                Ok(out.len())
            })
        }

        fn finalize<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
            let g = self
                .inner
                .take()
                .ok_or_else(|| finished("AesGcmEncryptor"))?;
            Ok(PyBytes::new(py, &g.finalize()?))
        }
    }

    #[pyclass(module = "kim_appliance._native")]
    struct AesGcmDecryptor {
        inner: Option<gcm::SpoolingDecryptor>,
    }

    #[pymethods]
    impl AesGcmDecryptor {
        #[new]
        #[pyo3(signature = (key, nonce, aad = None, spool_dir = None))]
        fn new(
            key: &[u8],
            nonce: &[u8],
            aad: Option<PyBackedBytes>,
            spool_dir: Option<std::path::PathBuf>,
        ) -> PyResult<Self> {
            let aad: &[u8] = aad.as_deref().unwrap_or(b"");
            let d = gcm::SpoolingDecryptor::new(key, nonce, aad, spool_dir.as_deref())?;
            Ok(AesGcmDecryptor { inner: Some(d) })
        }

        fn update(&mut self, py: Python<'_>, data: PyBackedBytes) -> PyResult<()> {
            let d = self
                .inner
                .as_mut()
                .ok_or_else(|| finished("AesGcmDecryptor"))?;
            maybe_detach(py, data.len(), || d.update(&data))?;
            Ok(())
        }

        fn finalize(&mut self, tag: &[u8]) -> PyResult<Plaintext> {
            let d = self
                .inner
                .take()
                .ok_or_else(|| finished("AesGcmDecryptor"))?;
            let (file, size) = d.finalize(tag)?;
            Ok(Plaintext {
                file: Some(file),
                size,
            })
        }
    }

    /// Authenticated plaintext in an anonymous spool file.
    #[pyclass(module = "kim_appliance._native")]
    struct Plaintext {
        file: Option<File>,
        size: u64,
    }

    impl Plaintext {
        fn file(&mut self) -> PyResult<&mut File> {
            self.file
                .as_mut()
                .ok_or_else(|| PyValueError::new_err("I/O operation on closed Plaintext"))
        }
    }

    fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match f.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    #[pymethods]
    impl Plaintext {
        #[getter]
        fn size(&self) -> u64 {
            self.size
        }

        #[pyo3(signature = (n = -1))]
        fn read<'py>(&mut self, py: Python<'py>, n: i64) -> PyResult<Bound<'py, PyBytes>> {
            let size = self.size;
            let f = self.file()?;
            let pos = f.stream_position()?;
            let left = size.saturating_sub(pos);
            let want = if n < 0 { left } else { (n as u64).min(left) } as usize;
            let mut buf = vec![0u8; want];
            let got = maybe_detach(py, want, || read_full(f, &mut buf))?;
            buf.truncate(got);
            Ok(bytes_out(py, buf))
        }

        fn readinto(&mut self, py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<usize> {
            let pybuf = PyBuffer::<u8>::get(buffer)?;
            if pybuf.readonly() || !pybuf.is_c_contiguous() {
                return Err(PyValueError::new_err(
                    "buffer: readinto needs a writable, contiguous byte buffer",
                ));
            }
            let len = pybuf.len_bytes();
            let ptr = pybuf.buf_ptr() as usize;
            let f = self.file()?;
            // SAFETY: the buffer is exported (so it cannot be resized or freed) until `pybuf` is
            // dropped at the end of this function, and it is writable and contiguous.
            let got = maybe_detach(py, len, move || {
                let slice = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) };
                read_full(f, slice)
            })?;
            drop(pybuf);
            Ok(got)
        }

        #[pyo3(signature = (offset, whence = 0))]
        fn seek(&mut self, offset: i64, whence: i32) -> PyResult<u64> {
            let f = self.file()?;
            let to = match whence {
                0 => {
                    if offset < 0 {
                        return Err(PyValueError::new_err(format!(
                            "offset: negative seek position {offset}"
                        )));
                    }
                    SeekFrom::Start(offset as u64)
                }
                1 => SeekFrom::Current(offset),
                2 => SeekFrom::End(offset),
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "whence: must be 0, 1 or 2, got {whence}"
                    )))
                }
            };
            Ok(f.seek(to)?)
        }

        fn tell(&mut self) -> PyResult<u64> {
            Ok(self.file()?.stream_position()?)
        }

        fn readable(&self) -> bool {
            true
        }

        fn seekable(&self) -> bool {
            true
        }

        fn writable(&self) -> bool {
            false
        }

        #[getter]
        fn closed(&self) -> bool {
            self.file.is_none()
        }

        fn close(&mut self) {
            self.file = None;
        }

        fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
            slf
        }

        #[pyo3(signature = (*_exc))]
        fn __exit__(&mut self, _exc: &Bound<'_, pyo3::types::PyTuple>) {
            self.file = None;
        }
    }

    #[pyfunction]
    #[pyo3(signature = (key, nonce, plaintext, aad = None))]
    fn gcm_seal<'py>(
        py: Python<'py>,
        key: &[u8],
        nonce: &[u8],
        plaintext: PyBackedBytes,
        aad: Option<PyBackedBytes>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let aad: &[u8] = aad.as_deref().unwrap_or(b"");
        let out = maybe_detach(py, plaintext.len(), || {
            gcm::seal(key, nonce, &plaintext, aad)
        })?;
        Ok(bytes_out(py, out))
    }

    #[pyfunction]
    #[pyo3(signature = (key, nonce, ciphertext_and_tag, aad = None))]
    fn gcm_open<'py>(
        py: Python<'py>,
        key: &[u8],
        nonce: &[u8],
        ciphertext_and_tag: PyBackedBytes,
        aad: Option<PyBackedBytes>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let aad: &[u8] = aad.as_deref().unwrap_or(b"");
        let out = maybe_detach(py, ciphertext_and_tag.len(), || {
            gcm::open(key, nonce, &ciphertext_and_tag, aad)
        })?;
        Ok(bytes_out(py, out))
    }

    // --- BER ----------------------------------------------------------------------------------

    #[pyclass(module = "kim_appliance._native", frozen)]
    struct BerEvent {
        #[pyo3(get)]
        kind: u8,
        #[pyo3(get)]
        tag_class: u8,
        #[pyo3(get)]
        constructed: bool,
        #[pyo3(get)]
        tag_number: u64,
        #[pyo3(get)]
        length: Option<u64>,
        #[pyo3(get)]
        offset: u64,
        #[pyo3(get)]
        depth: usize,
        #[pyo3(get)]
        value: Py<PyBytes>,
    }

    #[pymethods]
    impl BerEvent {
        fn __repr__(&self, py: Python<'_>) -> String {
            let kind = match self.kind {
                ber::EVENT_START => "START",
                ber::EVENT_END => "END",
                ber::EVENT_VALUE => "VALUE",
                ber::EVENT_RAW => "RAW",
                _ => "DATA",
            };
            format!(
                "BerEvent({kind}, class={}, constructed={}, tag={}, length={:?}, offset={}, depth={}, value={} bytes)",
                self.tag_class,
                self.constructed,
                self.tag_number,
                self.length,
                self.offset,
                self.depth,
                self.value.bind(py).as_bytes().len()
            )
        }
    }

    #[pyclass(module = "kim_appliance._native")]
    struct BerReader {
        inner: ber::Reader,
    }

    #[pymethods]
    impl BerReader {
        #[new]
        #[pyo3(signature = (max_depth = 32, max_capture = 16 * 1024 * 1024))]
        fn new(max_depth: usize, max_capture: u64) -> Self {
            BerReader {
                inner: ber::Reader::new(max_depth, max_capture),
            }
        }

        fn feed(&mut self, data: &[u8]) -> PyResult<()> {
            Ok(self.inner.feed(data)?)
        }

        fn feed_eof(&mut self) {
            self.inner.feed_eof();
        }

        fn next_event(&mut self, py: Python<'_>) -> PyResult<Option<BerEvent>> {
            let r = &mut self.inner;
            // A large flatten/capture/value copies at most what was fed; release the GIL for it
            // only when a lot is buffered.
            let buffered = r.remaining().len();
            let ev = maybe_detach(py, buffered, || r.next_event())?;
            Ok(ev.map(|e| BerEvent {
                kind: e.kind,
                tag_class: e.tag_class,
                constructed: e.constructed,
                tag_number: e.tag_number,
                length: e.length,
                offset: e.offset,
                depth: e.depth,
                value: PyBytes::new(py, &e.value).unbind(),
            }))
        }

        fn capture(&mut self) -> PyResult<()> {
            Ok(self.inner.capture()?)
        }

        fn flatten(&mut self) -> PyResult<()> {
            Ok(self.inner.flatten()?)
        }

        #[getter]
        fn offset(&self) -> u64 {
            self.inner.offset()
        }

        #[getter]
        fn done(&self) -> bool {
            self.inner.done()
        }

        fn remaining<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            PyBytes::new(py, self.inner.remaining())
        }
    }

    #[pyfunction]
    #[pyo3(signature = (tag_class, constructed, tag_number, length))]
    fn ber_header<'py>(
        py: Python<'py>,
        tag_class: u8,
        constructed: bool,
        tag_number: u64,
        length: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        Ok(bytes_out(
            py,
            ber::header(tag_class, constructed, tag_number, length)?,
        ))
    }

    #[pyclass(module = "kim_appliance._native")]
    struct OctetStringChunker {
        inner: ber::OctetStringChunker,
    }

    #[pymethods]
    impl OctetStringChunker {
        #[new]
        #[pyo3(signature = (chunk_size = 65536))]
        fn new(chunk_size: usize) -> PyResult<Self> {
            Ok(OctetStringChunker {
                inner: ber::OctetStringChunker::new(chunk_size)?,
            })
        }

        fn update<'py>(
            &mut self,
            py: Python<'py>,
            data: PyBackedBytes,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let c = &mut self.inner;
            let n = c.output_len(data.len());
            bytes_exact(py, n, |out| Ok(c.update_into(&data, out)))
        }

        fn finalize<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
            bytes_out(py, self.inner.finalize())
        }
    }

    // --- base64 -------------------------------------------------------------------------------

    #[pyclass(module = "kim_appliance._native")]
    struct Base64Encoder {
        inner: base64::Encoder<base64::Shipped>,
    }

    #[pymethods]
    impl Base64Encoder {
        #[new]
        #[pyo3(signature = (line_length = 76))]
        fn new(line_length: usize) -> PyResult<Self> {
            Ok(Base64Encoder {
                inner: base64::Encoder::new(line_length)?,
            })
        }

        fn update<'py>(
            &mut self,
            py: Python<'py>,
            data: PyBackedBytes,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let e = &mut self.inner;
            let n = e.output_len(data.len());
            bytes_exact(py, n, |out| Ok(e.update_into(&data, out)))
        }

        fn finalize<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
            bytes_out(py, self.inner.finalize())
        }
    }

    #[pyclass(module = "kim_appliance._native")]
    struct Base64Decoder {
        inner: base64::Decoder<base64::Shipped>,
    }

    #[pymethods]
    impl Base64Decoder {
        #[new]
        fn new() -> Self {
            Base64Decoder {
                inner: base64::Decoder::new(),
            }
        }

        fn update<'py>(
            &mut self,
            py: Python<'py>,
            data: PyBackedBytes,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let d = &mut self.inner;
            let n = maybe_detach(py, data.len(), || d.begin(&data))?;
            bytes_exact(py, n, |out| d.finish(&data, out))
        }

        fn finalize<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
            Ok(bytes_out(py, self.inner.finalize()?))
        }
    }

    // --- dot-stuffing -------------------------------------------------------------------------

    #[pyclass(module = "kim_appliance._native")]
    struct DotStuffer {
        inner: dot::Stuffer,
    }

    #[pymethods]
    impl DotStuffer {
        #[new]
        fn new() -> Self {
            DotStuffer {
                inner: dot::Stuffer::new(),
            }
        }

        fn update<'py>(&mut self, py: Python<'py>, data: PyBackedBytes) -> Bound<'py, PyBytes> {
            let s = &mut self.inner;
            let out = maybe_detach(py, data.len(), || s.update(&data));
            bytes_out(py, out)
        }

        fn finalize<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
            bytes_out(py, self.inner.finalize())
        }
    }

    #[pyclass(module = "kim_appliance._native")]
    struct DotUnstuffer {
        inner: dot::Unstuffer,
    }

    #[pymethods]
    impl DotUnstuffer {
        #[new]
        fn new() -> Self {
            DotUnstuffer {
                inner: dot::Unstuffer::new(),
            }
        }

        fn feed<'py>(&mut self, py: Python<'py>, data: PyBackedBytes) -> Bound<'py, PyBytes> {
            let u = &mut self.inner;
            let out = maybe_detach(py, data.len(), || u.feed(&data));
            bytes_out(py, out)
        }

        #[getter]
        fn done(&self) -> bool {
            self.inner.done()
        }

        fn take_rest<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
            bytes_out(py, self.inner.take_rest())
        }

        #[getter]
        fn bare_lf(&self) -> u64 {
            self.inner.bare_lf()
        }

        #[getter]
        fn bare_cr(&self) -> u64 {
            self.inner.bare_cr()
        }

        #[getter]
        fn longest_line(&self) -> u64 {
            self.inner.longest_line()
        }
    }

    // --- bench-only candidates (feature `bench-candidates`, built by bench/native.py) ---------

    /// Seconds per run of each AES-256-GCM candidate (see `candidates.rs`).
    #[cfg(feature = "bench-candidates")]
    #[pyfunction]
    fn _bench_gcm(
        py: Python<'_>,
        engine: &str,
        encrypt: bool,
        data: PyBackedBytes,
        chunk: usize,
        repeat: usize,
    ) -> PyResult<Vec<f64>> {
        Ok(py.detach(|| crate::candidates::gcm(engine, encrypt, &data, chunk, repeat))?)
    }

    /// Seconds per run of each base64 candidate (see `candidates.rs`).
    #[cfg(feature = "bench-candidates")]
    #[pyfunction]
    fn _bench_base64(
        py: Python<'_>,
        codec: &str,
        encode: bool,
        data: PyBackedBytes,
        chunk: usize,
        line_length: usize,
        repeat: usize,
    ) -> PyResult<Vec<f64>> {
        Ok(py.detach(|| {
            crate::candidates::base64(codec, encode, &data, chunk, line_length, repeat)
        })?)
    }

    #[pymodule]
    fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        m.add("NativeError", py.get_type::<NativeError>())?;
        m.add("BerError", py.get_type::<BerError>())?;
        m.add("TagMismatchError", py.get_type::<TagMismatchError>())?;
        m.add("Base64Error", py.get_type::<Base64Error>())?;
        m.add_class::<Sha256>()?;
        m.add_function(wrap_pyfunction!(sha256, m)?)?;
        m.add("OPENSSL_VERSION", openssl::version::version())?;
        m.add_class::<AesGcmEncryptor>()?;
        m.add_class::<AesGcmDecryptor>()?;
        m.add_class::<Plaintext>()?;
        m.add_function(wrap_pyfunction!(gcm_seal, m)?)?;
        m.add_function(wrap_pyfunction!(gcm_open, m)?)?;
        m.add("EVENT_START", ber::EVENT_START)?;
        m.add("EVENT_END", ber::EVENT_END)?;
        m.add("EVENT_VALUE", ber::EVENT_VALUE)?;
        m.add("EVENT_RAW", ber::EVENT_RAW)?;
        m.add("EVENT_DATA", ber::EVENT_DATA)?;
        m.add("CLASS_UNIVERSAL", ber::CLASS_UNIVERSAL)?;
        m.add("CLASS_APPLICATION", ber::CLASS_APPLICATION)?;
        m.add("CLASS_CONTEXT", ber::CLASS_CONTEXT)?;
        m.add("CLASS_PRIVATE", ber::CLASS_PRIVATE)?;
        m.add_class::<BerEvent>()?;
        m.add_class::<BerReader>()?;
        m.add_function(wrap_pyfunction!(ber_header, m)?)?;
        m.add_class::<OctetStringChunker>()?;
        m.add_class::<Base64Encoder>()?;
        m.add_class::<Base64Decoder>()?;
        m.add_class::<DotStuffer>()?;
        m.add_class::<DotUnstuffer>()?;
        #[cfg(feature = "bench-candidates")]
        {
            m.add_function(wrap_pyfunction!(_bench_gcm, m)?)?;
            m.add_function(wrap_pyfunction!(_bench_base64, m)?)?;
            m.add("_GCM_ENGINES", crate::candidates::GCM_ENGINES.to_vec())?;
            m.add("_BASE64_CODECS", crate::candidates::BASE64_CODECS.to_vec())?;
        }
        Ok(())
    }
}
