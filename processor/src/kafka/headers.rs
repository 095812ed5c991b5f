//! A consumed record's headers, read through librdkafka directly.
//!
//! The rdkafka crate's `BorrowedHeaders::try_get` unwraps the header name as UTF-8, so one
//! record with a name that is not UTF-8 would panic the worker and, read again after the
//! restart, crash-loop the pipeline. Here names are decoded as Kafka's Java client decodes
//! them (`new String(bytes, UTF_8)`): invalid bytes become U+FFFD, and the record flows.

use std::ffi::CStr;
use std::ptr;

use rdkafka::bindings as rd;
use rdkafka::message::BorrowedMessage;

/// A header: its name (lossless when UTF-8) and its value (empty for a null value).
pub type Header = (String, Vec<u8>);

/// The headers of `m`, copied, in order.
#[allow(unsafe_code)]
pub fn headers_of(m: &BorrowedMessage<'_>) -> Vec<Header> {
    let mut headers: *mut rd::rd_kafka_headers_t = ptr::null_mut();
    // SAFETY: `m.ptr()` is the live message `m` borrows; the headers it hands back belong
    // to that message and are only read below, while `m` is borrowed.
    let err = unsafe { rd::rd_kafka_message_headers(m.ptr(), &mut headers) };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
        return Vec::new();
    }
    // SAFETY: `headers` is non-null and owned by the live message.
    let count = unsafe { rd::rd_kafka_header_cnt(headers) };
    let mut out = Vec::with_capacity(count);
    for idx in 0..count {
        let mut name = ptr::null();
        let mut value = ptr::null();
        let mut size = 0usize;
        // SAFETY: `idx` is below the count; the out-pointers are valid locals.
        let err =
            unsafe { rd::rd_kafka_header_get_all(headers, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: librdkafka stores every header name NUL-terminated; a non-null value
        // points at `size` bytes; both live as long as the message.
        let (name, value) = unsafe {
            let name = CStr::from_ptr(name).to_bytes();
            let value = if value.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(value.cast::<u8>(), size)
            };
            (name, value)
        };
        out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    out
}
