//! Incremental topic config changes with Kafka's own error messages.
//!
//! The rdkafka crate wraps only the legacy `AlterConfigs` (which replaces every topic
//! config at once) and drops the per-resource error message Kafka sends back. This module
//! calls librdkafka's `rd_kafka_IncrementalAlterConfigs` on the shared admin client, so a
//! change touches only the keys that differ and a refusal carries Kafka's sentence (e.g.
//! "Invalid value abc for configuration retention.ms: Not a number of type LONG").
//! Every object created here is freed before the function returns.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int};
use std::ptr;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::kafka::AdminError;

/// One change to one topic config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    /// Set the key to the value.
    Set(String, String),
    /// Remove the topic-level value, so the broker default applies.
    Delete(String),
}

/// Applies `ops` to `topic` (or only validates them). Blocking: call from `spawn_blocking`.
pub fn alter_topic_configs(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    ops: &[ConfigOp],
    validate_only: bool,
    timeout: Duration,
) -> Result<(), AdminError> {
    let invalid = |what: &str| AdminError::Rejected {
        code: RDKafkaErrorCode::InvalidConfig,
        message: format!("{what} contains a NUL byte"),
    };
    let topic_c = CString::new(topic).map_err(|_| invalid("the topic name"))?;
    let mut owned: Vec<(CString, Option<CString>, rd::rd_kafka_AlterConfigOpType_t)> = Vec::new();
    for op in ops {
        owned.push(match op {
            ConfigOp::Set(k, v) => (
                CString::new(k.as_str()).map_err(|_| invalid("a config key"))?,
                Some(CString::new(v.as_str()).map_err(|_| invalid("a config value"))?),
                rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
            ),
            ConfigOp::Delete(k) => (
                CString::new(k.as_str()).map_err(|_| invalid("a config key"))?,
                None,
                rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_DELETE,
            ),
        });
    }
    let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    let rk = admin.inner().native_ptr();

    // SAFETY: `rk` lives as long as `admin`. The queue, options, resource and event are
    // created and destroyed here on every path; librdkafka copies the request (resource and
    // options) before `rd_kafka_IncrementalAlterConfigs` returns; strings read from the
    // result are copied before the event that owns them is destroyed.
    unsafe {
        let mut errstr = [0 as c_char; 512];
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
        );
        if options.is_null() {
            return Err(AdminError::Unavailable(
                "cannot create admin options".into(),
            ));
        }
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        if validate_only {
            rd::rd_kafka_AdminOptions_set_validate_only(
                options,
                1,
                errstr.as_mut_ptr(),
                errstr.len(),
            );
        }
        let resource = rd::rd_kafka_ConfigResource_new(
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
            topic_c.as_ptr(),
        );
        for (key, value, op) in &owned {
            let value_ptr = value.as_ref().map_or(ptr::null(), |v| v.as_ptr());
            let error = rd::rd_kafka_ConfigResource_add_incremental_config(
                resource,
                key.as_ptr(),
                *op,
                value_ptr,
            );
            if !error.is_null() {
                let code = RDKafkaErrorCode::from(rd::rd_kafka_error_code(error));
                let message = cstr(rd::rd_kafka_error_string(error));
                rd::rd_kafka_error_destroy(error);
                rd::rd_kafka_ConfigResource_destroy(resource);
                rd::rd_kafka_AdminOptions_destroy(options);
                return Err(AdminError::Rejected { code, message });
            }
        }
        let queue = rd::rd_kafka_queue_new(rk);
        let mut resources = [resource];
        rd::rd_kafka_IncrementalAlterConfigs(rk, resources.as_mut_ptr(), 1, options, queue);
        rd::rd_kafka_ConfigResource_destroy(resource);
        rd::rd_kafka_AdminOptions_destroy(options);

        // The request times out on its own after `timeout`; wait a little longer for that answer.
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(5000));
        if event.is_null() {
            rd::rd_kafka_queue_destroy(queue);
            return Err(AdminError::Unavailable(format!(
                "no answer to IncrementalAlterConfigs for topic {topic}"
            )));
        }
        let result = event_result(event, topic);
        rd::rd_kafka_event_destroy(event);
        rd::rd_kafka_queue_destroy(queue);
        result
    }
}

/// Reads the outcome of an IncrementalAlterConfigs event.
///
/// # Safety
/// `event` must be a live event returned by polling the request's queue.
unsafe fn event_result(event: *mut rd::rd_kafka_event_t, topic: &str) -> Result<(), AdminError> {
    // SAFETY: the caller keeps `event` alive; every pointer read here is owned by it.
    unsafe {
        let err = rd::rd_kafka_event_error(event);
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            let code = RDKafkaErrorCode::from(err);
            let message = cstr(rd::rd_kafka_event_error_string(event));
            return Err(classify(code, message));
        }
        let result = rd::rd_kafka_event_IncrementalAlterConfigs_result(event);
        if result.is_null() {
            return Err(AdminError::Unavailable(format!(
                "unexpected answer to IncrementalAlterConfigs for topic {topic}"
            )));
        }
        let mut count = 0usize;
        let resources = rd::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count);
        for i in 0..count {
            let r = *resources.add(i);
            let err = rd::rd_kafka_ConfigResource_error(r);
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                let code = RDKafkaErrorCode::from(err);
                let mut message = cstr(rd::rd_kafka_ConfigResource_error_string(r));
                if message.is_empty() {
                    message = code.to_string();
                }
                return Err(classify(code, message));
            }
        }
        Ok(())
    }
}

fn classify(code: RDKafkaErrorCode, message: String) -> AdminError {
    match AdminError::from_code(code) {
        AdminError::Rejected { code, .. } => AdminError::Rejected { code, message },
        AdminError::Unavailable(_) => AdminError::Unavailable(message),
    }
}

/// Copies a C string librdkafka owns; empty for null.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that lives for this call.
unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: see the function's contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}
