//! The envelope every event travels in, its validation and its Redis stream encoding.

use std::{fmt, str::FromStr};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Event, EventType};

/// The contract version this crate writes.
pub const CONTRACT_VERSION: EventVersion = EventVersion { major: 1, minor: 2 };

/// Why an event could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// A required field is absent (or `null`).
    #[error("missing required field `{0}`")]
    MissingField(String),
    /// A field is present but its value is not acceptable.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// The wire name of the field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The event's MAJOR version is not one this crate understands.
    #[error(
        "unsupported event version {version}: this consumer understands major version {supported}"
    )]
    UnsupportedVersion {
        /// The version the event carries.
        version: String,
        /// The major version understood here.
        supported: u32,
    },
    /// The event type is not part of the contract.
    #[error("unknown event type `{0}`")]
    UnknownEventType(String),
    /// The bytes are not a JSON object.
    #[error("not a JSON event envelope: {0}")]
    Malformed(String),
}

impl ContractError {
    fn invalid(field: &str, reason: impl fmt::Display) -> Self {
        Self::InvalidField {
            field: field.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// `MAJOR.MINOR` of the contract an event was written with.
///
/// Consumers accept any MINOR of a MAJOR they know (new fields are ignored) and refuse an
/// unknown MAJOR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventVersion {
    /// Breaking changes.
    pub major: u32,
    /// Additive changes.
    pub minor: u32,
}

impl fmt::Display for EventVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for EventVersion {
    type Err = ContractError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ContractError::invalid("eventVersion", format!("`{s}` is not MAJOR.MINOR"));
        let (major, minor) = s.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        })
    }
}

/// One event as it travels on the wire (contract v1).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// UUIDv7, unique: the idempotency key.
    pub event_id: Uuid,
    /// The contract version the event was written with.
    pub event_version: EventVersion,
    /// The tenant the event belongs to.
    pub tenant_id: Uuid,
    /// Per-tenant sequence number, gap-free, assigned in the writing transaction.
    pub seq: i64,
    /// The id of the changed aggregate (user, role, …).
    pub aggregate_id: String,
    /// Per-aggregate version, increasing on every change.
    pub aggregate_version: i64,
    /// When the change was committed.
    pub occurred_at: DateTime<Utc>,
    /// The service that produced the event, e.g. `wrapper`.
    pub source: String,
    /// Propagated from the request that caused the change.
    pub correlation_id: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// The event type and its typed payload.
    pub event: Event,
}

/// The wire shape, used for encoding only (decoding validates field by field). Its schema is
/// the `Envelope` of the AsyncAPI document ([`crate::asyncapi`]): written from the very struct
/// that encodes, with the decoder's rules as constraints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Envelope))]
pub(crate) struct Wire<'a> {
    /// UUIDv7, unique: the idempotency key.
    event_id: Uuid,
    /// `<aggregate>.<verb>`.
    event_type: EventType,
    /// `MAJOR.MINOR` of the contract the event was written with.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[0-9]+\.[0-9]+$", example = "1.0")
    )]
    event_version: String,
    /// The tenant the event belongs to.
    tenant_id: Uuid,
    /// Per-tenant sequence number, gap-free.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    seq: i64,
    /// The id of the changed aggregate.
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    aggregate_id: &'a str,
    /// Per-aggregate version, increasing on every change.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    aggregate_version: i64,
    /// When the change was committed (RFC 3339, milliseconds, UTC).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    occurred_at: String,
    /// The producing service, e.g. `wrapper`.
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    source: &'a str,
    /// Propagated from the request that caused the change (`X-Correlation-Id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    /// W3C trace context of the write that made the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
    )]
    traceparent: Option<&'a str>,
    /// The aggregate's new state: the schema of the event type's payload.
    payload: Value,
}

/// Stream entry field holding the JSON envelope. The other fields are copies for operators and
/// for filtering (DLQ redrive by type or tenant) without parsing JSON.
/// The stream-entry field holding the envelope JSON.
pub const FIELD_ENVELOPE: &str = "envelope";

impl Envelope {
    /// The event type.
    pub fn event_type(&self) -> EventType {
        self.event.event_type()
    }

    /// The envelope as JSON.
    pub fn to_json(&self) -> Value {
        let wire = Wire {
            event_id: self.event_id,
            event_type: self.event_type(),
            event_version: self.event_version.to_string(),
            tenant_id: self.tenant_id,
            seq: self.seq,
            aggregate_id: &self.aggregate_id,
            aggregate_version: self.aggregate_version,
            occurred_at: self
                .occurred_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
            source: &self.source,
            correlation_id: self.correlation_id.as_deref(),
            traceparent: self.traceparent.as_deref(),
            payload: self.event.payload_json(),
        };
        serde_json::to_value(wire).unwrap_or(Value::Null)
    }

    /// The envelope as a JSON string.
    pub fn to_json_string(&self) -> String {
        self.to_json().to_string()
    }

    /// Decode and validate an envelope from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self, ContractError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ContractError::Malformed(e.to_string()))?;
        Self::from_json(value)
    }

    /// Decode and validate an envelope from a JSON value.
    ///
    /// Checks the version first (an unknown MAJOR may have renamed anything), then every
    /// required field, naming the first one that is missing or invalid. Unknown fields are
    /// ignored.
    pub fn from_json(value: Value) -> Result<Self, ContractError> {
        let Value::Object(mut obj) = value else {
            return Err(ContractError::Malformed("expected a JSON object".into()));
        };
        let version: EventVersion = required_str(&obj, "eventVersion")?.parse()?;
        if version.major != CONTRACT_VERSION.major {
            return Err(ContractError::UnsupportedVersion {
                version: version.to_string(),
                supported: CONTRACT_VERSION.major,
            });
        }
        let event_type: EventType = required_str(&obj, "eventType")?
            .parse()
            .map_err(|e: ContractError| ContractError::invalid("eventType", e))?;
        let envelope = Envelope {
            event_id: parse_field(&obj, "eventId")?,
            event_version: version,
            tenant_id: parse_field(&obj, "tenantId")?,
            seq: positive(&obj, "seq")?,
            aggregate_id: non_empty(&obj, "aggregateId")?,
            aggregate_version: positive(&obj, "aggregateVersion")?,
            occurred_at: parse_field(&obj, "occurredAt")?,
            source: non_empty(&obj, "source")?,
            correlation_id: optional_str(&obj, "correlationId")?,
            traceparent: optional_str(&obj, "traceparent")?,
            event: match obj.remove("payload") {
                None | Some(Value::Null) => {
                    return Err(ContractError::MissingField("payload".into()));
                }
                Some(payload) => Event::from_payload(event_type, payload)?,
            },
        };
        Ok(envelope)
    }

    /// The fields of the Redis stream entry that carries this event.
    pub fn to_stream_fields(&self) -> Vec<(&'static str, String)> {
        stream_fields(
            self.event_type().as_str(),
            self.tenant_id,
            self.seq,
            self.to_json_string(),
        )
    }

    /// Decode the event carried by a Redis stream entry's fields.
    pub fn from_stream_fields<K, V>(
        fields: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ContractError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let envelope = fields
            .into_iter()
            .find(|(k, _)| k.as_ref() == FIELD_ENVELOPE)
            .ok_or_else(|| ContractError::MissingField(FIELD_ENVELOPE.into()))?;
        Self::from_json_str(envelope.1.as_ref())
    }
}

/// The fields of a stream entry for an envelope already encoded as JSON (the relay publishes
/// outbox rows without re-encoding them). [`Envelope::to_stream_fields`] uses the same layout.
pub fn stream_fields(
    event_type: &str,
    tenant_id: Uuid,
    seq: i64,
    envelope_json: String,
) -> Vec<(&'static str, String)> {
    vec![
        ("eventType", event_type.to_owned()),
        ("tenantId", tenant_id.to_string()),
        ("seq", seq.to_string()),
        (FIELD_ENVELOPE, envelope_json),
    ]
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Envelope::from_json(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

fn present<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a Value, ContractError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(ContractError::MissingField(field.to_owned())),
        Some(v) => Ok(v),
    }
}

fn required_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, ContractError> {
    present(obj, field)?
        .as_str()
        .ok_or_else(|| ContractError::invalid(field, "expected a string"))
}

fn non_empty(obj: &Map<String, Value>, field: &str) -> Result<String, ContractError> {
    let s = required_str(obj, field)?;
    if s.trim().is_empty() {
        return Err(ContractError::invalid(field, "must not be empty"));
    }
    Ok(s.to_owned())
}

fn optional_str(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, ContractError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ContractError::invalid(field, "expected a string")),
    }
}

fn parse_field<T>(obj: &Map<String, Value>, field: &str) -> Result<T, ContractError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    required_str(obj, field)?
        .parse()
        .map_err(|e| ContractError::invalid(field, e))
}

fn positive(obj: &Map<String, Value>, field: &str) -> Result<i64, ContractError> {
    match present(obj, field)?.as_i64() {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(ContractError::invalid(field, "expected an integer ≥ 1")),
    }
}
