//! Committed offsets of any consumer group, read through the one shared admin client.
//!
//! The rdkafka crate wraps librdkafka's admin API only in part: it has no
//! `ListConsumerGroupOffsets`. Reading another group's offsets through the crate would
//! take one consumer (with its own threads and broker connections) per pipeline, so this
//! module calls librdkafka's `rd_kafka_ListConsumerGroupOffsets` on the shared client
//! instead. It is the only unsafe code in the operator; every pointer it receives is
//! freed before it returns.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_int};
use std::ptr;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;

/// A partition, by topic and number.
pub type PartitionKey = (String, i32);

/// Why the offsets could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OffsetsError {
    /// The group name holds a NUL byte.
    #[error("invalid consumer group name {0:?}")]
    BadGroup(String),
    /// No answer within the timeout.
    #[error("listing offsets of group {0} timed out")]
    Timeout(String),
    /// Kafka answered with an error.
    #[error("listing offsets of group {group}: {message}")]
    Kafka {
        /// The group.
        group: String,
        /// Kafka's message.
        message: String,
    },
}

/// The committed offset of every partition the group has committed; partitions it never
/// committed are absent.
///
/// Blocking: call from `spawn_blocking`.
pub fn committed_offsets(
    admin: &AdminClient<DefaultClientContext>,
    group: &str,
    timeout: Duration,
) -> Result<BTreeMap<PartitionKey, i64>, OffsetsError> {
    // The handle lives as long as `admin`, which outlives this call.
    let rk = admin.inner().native_ptr();
    let group_c = CString::new(group).map_err(|_| OffsetsError::BadGroup(group.to_string()))?;
    let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: every object created here is destroyed on every path below; the request,
    // options and partitions are copied by librdkafka before `ListConsumerGroupOffsets`
    // returns; the result is read before the event that owns it is destroyed.
    unsafe {
        let queue = rd::rd_kafka_queue_new(rk);
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS,
        );
        let mut errbuf = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            timeout_ms,
            errbuf.as_mut_ptr(),
            errbuf.len(),
        );
        let mut request = [rd::rd_kafka_ListConsumerGroupOffsets_new(
            group_c.as_ptr(),
            ptr::null(),
        )];
        rd::rd_kafka_ListConsumerGroupOffsets(rk, request.as_mut_ptr(), 1, options, queue);
        rd::rd_kafka_ListConsumerGroupOffsets_destroy_array(request.as_mut_ptr(), 1);
        rd::rd_kafka_AdminOptions_destroy(options);

        let event = rd::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(1000));
        let result = if event.is_null() {
            Err(OffsetsError::Timeout(group.to_string()))
        } else {
            let read = read_event(event, group);
            rd::rd_kafka_event_destroy(event);
            read
        };
        rd::rd_kafka_queue_destroy(queue);
        result
    }
}

/// Reads a `ListConsumerGroupOffsets` result event.
///
/// # Safety
/// `event` must be a live, non-null result event of that request.
unsafe fn read_event(
    event: *mut rd::rd_kafka_event_t,
    group: &str,
) -> Result<BTreeMap<PartitionKey, i64>, OffsetsError> {
    let kafka_err = |message: String| OffsetsError::Kafka {
        group: group.to_string(),
        message,
    };
    // SAFETY: the caller guarantees `event` is live; pointers read from it live as long as it.
    unsafe {
        let err = rd::rd_kafka_event_error(event);
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(kafka_err(text(rd::rd_kafka_event_error_string(event))));
        }
        let result = rd::rd_kafka_event_ListConsumerGroupOffsets_result(event);
        if result.is_null() {
            return Err(kafka_err("unexpected admin result".into()));
        }
        let mut count = 0usize;
        let groups = rd::rd_kafka_ListConsumerGroupOffsets_result_groups(result, &mut count);
        let mut offsets = BTreeMap::new();
        for i in 0..count {
            let group_result = *groups.add(i);
            let error = rd::rd_kafka_group_result_error(group_result);
            if !error.is_null() {
                return Err(kafka_err(text(rd::rd_kafka_error_string(error))));
            }
            let list = rd::rd_kafka_group_result_partitions(group_result);
            if list.is_null() {
                continue;
            }
            let len = usize::try_from((*list).cnt).unwrap_or(0);
            for j in 0..len {
                let elem = &*(*list).elems.add(j);
                if elem.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                    && elem.offset >= 0
                {
                    offsets.insert((text(elem.topic), elem.partition), elem.offset);
                }
            }
        }
        Ok(offsets)
    }
}

/// Copies a C string owned by librdkafka; null becomes empty.
///
/// # Safety
/// `ptr` is null or a valid NUL-terminated string.
unsafe fn text(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated per the caller.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}
