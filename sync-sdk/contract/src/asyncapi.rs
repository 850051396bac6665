//! The contract as an [AsyncAPI 3.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0)
//! document, for app teams outside Rust.
//!
//! Nothing in it is written by hand twice: the envelope's schema is derived from the struct that
//! encodes envelopes, each payload's from its `*State` type, the list of messages from
//! [`EventType::ALL`], and the stream-entry fields from [`stream_fields`] (a test holds the
//! header schema to them). The wrapper serves it at `/api/asyncapi.json`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use utoipa::{
    ToSchema,
    openapi::{RefOr, schema::Schema},
};

use crate::{CONTRACT_VERSION, EventType, envelope::Wire, stream_fields};

/// Add `T`'s schema and those it refers to.
pub(crate) fn collect<T: ToSchema>(out: &mut BTreeMap<String, RefOr<Schema>>) {
    out.insert(T::name().into_owned(), T::schema());
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    out.extend(nested);
}

/// The fields of a stream entry besides `envelope`: copies for filtering without parsing JSON,
/// and the publishing hop's trace context.
fn entry_fields_schema() -> Value {
    json!({
        "type": "object",
        "description": "The other fields of the Redis stream entry (all strings). The relay adds \
            `traceparent` (its publish span) when it exports traces; consumers prefer it to the \
            envelope's as the parent of their apply.",
        "required": ["eventType", "tenantId", "seq"],
        "properties": {
            "eventType": { "$ref": "#/components/schemas/EventType" },
            "tenantId": { "type": "string", "format": "uuid" },
            "seq": { "type": "string", "pattern": "^[1-9][0-9]*$" },
            "traceparent": {
                "type": "string",
                "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
            }
        }
    })
}

/// A dead letter: an entry an app could not process, with why.
fn dead_letter_schema() -> Value {
    json!({
        "type": "object",
        "description": "A Redis stream entry of `{namespace}:dlq:{app}` (all values strings).",
        "required": ["stream", "entryId", "error", "attempts", "at", "fields"],
        "properties": {
            "stream": { "type": "string", "description": "The partition stream it was read from." },
            "entryId": { "type": "string", "description": "Its entry id there." },
            "error": { "type": "string", "description": "Why it was dead-lettered." },
            "attempts": { "type": "string", "pattern": "^[0-9]+$",
                          "description": "Handler attempts (0: never attempted, e.g. undecodable)." },
            "at": { "type": "string", "format": "date-time" },
            "eventType": { "type": "string", "description": "Empty when the entry did not say." },
            "tenantId": { "type": "string", "description": "Empty when the entry did not say." },
            "fields": { "type": "string", "contentMediaType": "application/json",
                        "description": "The original entry's fields as a JSON object: redriving appends them to `stream` again." }
        }
    })
}

/// A lifecycle command: an operation every app carries out and confirms.
fn lifecycle_command_schema() -> Value {
    json!({
        "type": "object",
        "description": "A Redis stream entry of `{namespace}:lifecycle` (all values strings). \
            Carry it out idempotently, then confirm with `PUT /api/sync/operations/{operationId}/receipt` \
            (the wrapper's OpenAPI document); acknowledge the entry only once the receipt is recorded. \
            The wrapper sends it again until every registered app confirmed.",
        "required": ["operationId", "kind", "tenantId"],
        "properties": {
            "operationId": { "type": "string", "format": "uuid" },
            "kind": { "type": "string", "enum": ["erase_user", "purge_tenant"] },
            "tenantId": { "type": "string", "format": "uuid" },
            "userId": { "type": "string", "format": "uuid",
                        "description": "The user to erase (erase_user only)." }
        }
    })
}

fn to_json(schema: &RefOr<Schema>) -> Value {
    serde_json::to_value(schema).unwrap_or(Value::Null)
}

/// The AsyncAPI 3.0 document of contract v1.
pub fn document() -> Value {
    let mut schemas = BTreeMap::new();
    collect::<Wire<'static>>(&mut schemas);
    collect::<EventType>(&mut schemas);
    EventType::payload_schemas(&mut schemas);
    let mut schemas: Map<String, Value> = schemas
        .iter()
        .map(|(name, schema)| (name.clone(), to_json(schema)))
        .collect();
    schemas.insert("StreamEntryFields".into(), entry_fields_schema());
    schemas.insert("DeadLetter".into(), dead_letter_schema());
    schemas.insert("LifecycleCommand".into(), lifecycle_command_schema());

    let mut messages = Map::new();
    let mut channel_messages = Map::new();
    for &event_type in EventType::ALL {
        let key = event_type.variant_name();
        messages.insert(
            key.to_owned(),
            json!({
                "name": event_type.as_str(),
                "title": event_type.as_str(),
                "summary": format!("`{event_type}`: the aggregate's whole new state."),
                "contentType": "application/json",
                "headers": { "$ref": "#/components/schemas/StreamEntryFields" },
                "payload": {
                    "allOf": [
                        { "$ref": "#/components/schemas/Envelope" },
                        {
                            "type": "object",
                            "properties": {
                                "eventType": { "const": event_type.as_str() },
                                "payload": {
                                    "$ref": format!("#/components/schemas/{}", event_type.payload_schema_name())
                                }
                            }
                        }
                    ]
                }
            }),
        );
        channel_messages.insert(
            key.to_owned(),
            json!({ "$ref": format!("#/components/messages/{key}") }),
        );
    }
    messages.insert(
        "DeadLetter".into(),
        json!({
            "name": "dead_letter",
            "title": "Dead letter",
            "contentType": "application/json",
            "payload": { "$ref": "#/components/schemas/DeadLetter" }
        }),
    );
    messages.insert(
        "LifecycleCommand".into(),
        json!({
            "name": "lifecycle_command",
            "title": "Lifecycle command",
            "contentType": "application/json",
            "payload": { "$ref": "#/components/schemas/LifecycleCommand" }
        }),
    );
    let envelope_field = stream_fields("", uuid::Uuid::nil(), 0, String::new())
        .last()
        .map_or("envelope", |(name, _)| *name);

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Tenantsync events",
            "version": CONTRACT_VERSION.to_string(),
            "description": format!(
                "Every change the wrapper commits, published on Redis Streams through a \
                 transactional outbox.\n\n\
                 * **Entries.** One entry per event. Its `{envelope_field}` field holds the JSON \
                 envelope (the message payload); the other fields are the message headers.\n\
                 * **Order.** Per tenant, `seq` is gap-free and follows commit order; tenants are \
                 spread over `N` partition streams (`TSYNC_PARTITIONS`) by a pinned hash of the \
                 tenant id. A gap means an entry is still coming or lost: re-load the tenant.\n\
                 * **Idempotency.** `eventId` is unique; apply an event at most once, and by \
                 `aggregateVersion` (payloads are whole states, not diffs).\n\
                 * **Versioning.** `eventVersion` is MAJOR.MINOR. A MINOR adds fields or event \
                 types: ignore what you do not know. A MAJOR is refused by consumers that do not \
                 know it (dead-lettered, not misapplied): deploy consumers first.\n\
                 * **Secrets.** Payloads never carry password hashes, MFA secrets or tokens."
            )
        },
        "defaultContentType": "application/json",
        "channels": {
            "events": {
                "address": "{namespace}:events:{partitionTag}",
                "title": "Partition stream",
                "description": "One of the N partition streams. Every app reads each with its own \
                    consumer group (the app's name).",
                "parameters": {
                    "namespace": { "description": "TSYNC_NAMESPACE (default `tsync`)." },
                    "partitionTag": {
                        "description": "The partition number in braces, e.g. `{3}`: a Redis \
                            Cluster hash tag that keeps a partition's keys in one slot."
                    }
                },
                "messages": channel_messages
            },
            "deadLetters": {
                "address": "{namespace}:dlq:{app}",
                "title": "Dead letters of one app",
                "parameters": {
                    "namespace": { "description": "TSYNC_NAMESPACE (default `tsync`)." },
                    "app": { "description": "The app's name (its consumer group)." }
                },
                "messages": { "DeadLetter": { "$ref": "#/components/messages/DeadLetter" } }
            },
            "lifecycle": {
                "address": "{namespace}:lifecycle",
                "title": "Lifecycle operations",
                "description": "Erasures and purges every app carries out and confirms, read by \
                    each app's consumer group (the app's name) whatever its tenants' state.",
                "parameters": {
                    "namespace": { "description": "TSYNC_NAMESPACE (default `tsync`)." }
                },
                "messages": {
                    "LifecycleCommand": { "$ref": "#/components/messages/LifecycleCommand" }
                }
            }
        },
        "operations": {
            "publishEvents": {
                "action": "send",
                "channel": { "$ref": "#/channels/events" },
                "summary": "The wrapper's relay publishes every committed change, in commit order per tenant."
            },
            "consumeEvents": {
                "action": "receive",
                "channel": { "$ref": "#/channels/events" },
                "summary": "An app applies each event once, in seq order per tenant."
            },
            "deadLetter": {
                "action": "send",
                "channel": { "$ref": "#/channels/deadLetters" },
                "summary": "An app parks what it cannot process, with the reason."
            },
            "carryOutLifecycle": {
                "action": "receive",
                "channel": { "$ref": "#/channels/lifecycle" },
                "summary": "An app erases a user or purges a tenant, then sends its receipt."
            }
        },
        "components": {
            "schemas": schemas,
            "messages": messages
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_are_the_stream_entry_fields() {
        let fields: Vec<&str> = stream_fields("x", uuid::Uuid::nil(), 1, String::new())
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let schema = entry_fields_schema();
        let mut described: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        described.push("envelope");
        described.retain(|f| *f != "traceparent");
        let mut fields_sorted = fields.clone();
        fields_sorted.sort();
        described.sort();
        assert_eq!(fields_sorted, described);
        assert_eq!(fields.last(), Some(&"envelope"));
    }

    #[test]
    fn every_event_type_has_a_message_with_its_payload_schema() {
        let doc = document();
        for t in EventType::ALL {
            let message = &doc["components"]["messages"][t.variant_name()];
            assert_eq!(message["name"], t.as_str());
            let payload_ref = message["payload"]["allOf"][1]["properties"]["payload"]["$ref"]
                .as_str()
                .unwrap();
            let name = payload_ref.rsplit('/').next().unwrap();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{t}: no schema {name}"
            );
        }
        let envelope = &doc["components"]["schemas"]["Envelope"];
        assert!(envelope["properties"]["seq"].is_object(), "{envelope}");
    }
}
