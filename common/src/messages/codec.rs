//! The wire form every message shares: the envelope fields `schema` and
//! `type` beside the message's own, [`encode`], and the strict [`decode`]
//! whose every refusal is a [`DecodeError`] a consumer dead-letters.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version of the message schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest body any consumer accepts, in bytes. The biggest legitimate message
/// is a job result with its capped output (1 MiB by default, at most
/// 16 MiB by config, and JSON escaping can double it).
pub const MAX_BODY_BYTES: usize = 40 * 1024 * 1024;

/// A message type: a struct with a fixed `type` name and optional checks that
/// span several fields.
pub trait Message: Serialize + DeserializeOwned {
    /// The `type` field of the body and the AMQP `type` property.
    const TYPE: &'static str;

    /// Checks that field types cannot express. Called by [`decode`].
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Why a body was not accepted. Every variant means: dead-letter the message
/// with this text as the reason and go on with the next one.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("body is {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("body is not a JSON object: {0}")]
    NotJson(String),
    #[error("unsupported schema version {found:?} (this build reads {SCHEMA_VERSION})")]
    WrongSchema { found: serde_json::Value },
    #[error("message type {found:?} where {expected:?} was expected")]
    WrongType {
        found: serde_json::Value,
        expected: &'static str,
    },
    #[error("invalid {kind} message: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

#[derive(Serialize)]
struct Envelope<'a, M> {
    schema: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: &'a M,
}

/// Serialises a message with its envelope fields.
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    let envelope = Envelope {
        schema: SCHEMA_VERSION,
        kind: M::TYPE,
        body: message,
    };
    // Serialising our own structs (strings, numbers, maps with string keys)
    // cannot fail.
    serde_json::to_vec(&envelope).expect("messages always serialise")
}

/// Parses and validates a body as message type `M`.
pub fn decode<M: Message>(body: &[u8]) -> Result<M, DecodeError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(DecodeError::TooLarge {
            len: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let serde_json::Value::Object(mut fields) = value else {
        return Err(DecodeError::NotJson(
            "top-level value is not an object".into(),
        ));
    };
    let schema = fields.remove("schema").unwrap_or(serde_json::Value::Null);
    if schema != SCHEMA_VERSION {
        return Err(DecodeError::WrongSchema { found: schema });
    }
    let kind = fields.remove("type").unwrap_or(serde_json::Value::Null);
    if kind != M::TYPE {
        return Err(DecodeError::WrongType {
            found: kind,
            expected: M::TYPE,
        });
    }
    let message: M = serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| {
        DecodeError::Invalid {
            kind: M::TYPE,
            reason: e.to_string(),
        }
    })?;
    message.validate().map_err(|reason| DecodeError::Invalid {
        kind: M::TYPE,
        reason,
    })?;
    Ok(message)
}
