use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;

fn tenant() -> Uuid {
    Uuid::parse_str("b0a6e370-5d2f-4c1e-9f5b-0c6f1d2e3a4b").unwrap()
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// One sample event of every type, so a new type without a sample fails `every_type_has_a_sample`.
fn sample(event_type: EventType) -> Event {
    let t = tenant();
    let tenant_state = TenantState {
        id: t,
        name: "Acme".into(),
        subdomain: "acme".into(),
        domain: Some("acme.example".into()),
        plan: "pro".into(),
        features: vec!["crm".into(), "hrms".into()],
        theme: json!({"primary": "#123456"}),
        status: TenantStatus::Active,
    };
    let user = UserState {
        id: id(1),
        tenant_id: t,
        email: "ada@acme.test".into(),
        full_name: "Ada Lovelace".into(),
        avatar_url: None,
        email_verified: true,
        active: true,
        deleted_at: None,
    };
    let role = RoleState {
        id: id(2),
        tenant_id: t,
        name: "sales".into(),
        permissions: vec!["crm.accounts.write".into()],
        deleted: false,
    };
    let membership = MembershipState {
        id: id(3),
        tenant_id: t,
        user_id: id(1),
        role_id: id(2),
        active: true,
    };
    match event_type {
        EventType::TenantCreated => Event::TenantCreated(tenant_state),
        EventType::TenantUpdated => Event::TenantUpdated(tenant_state),
        EventType::TenantArchived => Event::TenantArchived(TenantState {
            status: TenantStatus::Archived,
            ..tenant_state
        }),
        EventType::TenantSuspended => Event::TenantSuspended(TenantState {
            status: TenantStatus::Suspended,
            ..tenant_state
        }),
        EventType::TenantResumed => Event::TenantResumed(tenant_state),
        EventType::UserCreated => Event::UserCreated(user),
        EventType::UserUpdated => Event::UserUpdated(user),
        EventType::UserEmailChanged => Event::UserEmailChanged(user),
        EventType::UserDeactivated => Event::UserDeactivated(UserState {
            active: false,
            ..user
        }),
        EventType::UserDeleted => Event::UserDeleted(UserState {
            active: false,
            deleted_at: Some(Utc.with_ymd_and_hms(2025, 10, 4, 15, 30, 0).unwrap()),
            ..user
        }),
        EventType::UserErased => Event::UserErased(UserState {
            active: false,
            deleted_at: Some(Utc.with_ymd_and_hms(2025, 10, 4, 15, 30, 0).unwrap()),
            ..user
        }),
        EventType::RoleCreated => Event::RoleCreated(role),
        EventType::RoleUpdated => Event::RoleUpdated(role),
        EventType::RoleDeleted => Event::RoleDeleted(RoleState {
            deleted: true,
            ..role
        }),
        EventType::MembershipGranted => Event::MembershipGranted(membership),
        EventType::MembershipRevoked => Event::MembershipRevoked(MembershipState {
            active: false,
            ..membership
        }),
        EventType::SettingsUpdated => Event::SettingsUpdated(SettingsState {
            tenant_id: t,
            values: BTreeMap::from([("locale".to_owned(), json!("en-GB"))]),
        }),
        EventType::CreditAllocated => Event::CreditAllocated(CreditAllocated {
            allocation_id: id(4),
            tenant_id: t,
            entity_id: None,
            application: Some("crm".into()),
            amount: 1000,
            balance_after: 1000,
        }),
        EventType::CreditConsumed => Event::CreditConsumed(CreditConsumed {
            operation_id: "op-1".into(),
            tenant_id: t,
            application: "crm".into(),
            operation_code: "crm.accounts.create".into(),
            amount: 35,
            balance_after: 965,
        }),
        EventType::CreditConfigUpdated => Event::CreditConfigUpdated(CreditConfigState {
            id: id(5),
            tenant_id: t,
            application: "crm".into(),
            operation_code: "crm.accounts.create".into(),
            cost: 35,
            active: true,
        }),
        EventType::CreditGrantChanged => Event::CreditGrantChanged(CreditGrantChanged {
            entry_id: id(6),
            grant_id: id(7),
            tenant_id: t,
            scope: "app:crm".into(),
            change: "expired".into(),
            amount: 120,
            remaining: 0,
            balance_after: 880,
        }),
        EventType::CreditThresholdReached => {
            Event::CreditThresholdReached(CreditThresholdReached {
                threshold_id: id(8),
                tenant_id: t,
                scope: "app:crm".into(),
                kind: "percent_used".into(),
                value: 80,
                balance: 190,
                percent_used: 81,
            })
        }
    }
}

fn envelope(event: Event) -> Envelope {
    Envelope {
        event_id: Uuid::parse_str("0192f0c4-7b6a-7c3e-8a1b-2c3d4e5f6a7b").unwrap(),
        event_version: CONTRACT_VERSION,
        tenant_id: tenant(),
        seq: 42,
        aggregate_id: "usr_123".into(),
        aggregate_version: 7,
        occurred_at: Utc.with_ymd_and_hms(2025, 10, 4, 15, 30, 0).unwrap(),
        source: "wrapper".into(),
        correlation_id: Some("req-1".into()),
        traceparent: None,
        event,
    }
}

fn sample_json() -> Value {
    envelope(sample(EventType::UserEmailChanged)).to_json()
}

#[test]
fn every_type_has_a_sample_of_its_own_type() {
    for &t in EventType::ALL {
        assert_eq!(sample(t).event_type(), t);
    }
    assert_eq!(EventType::ALL.len(), 22);
}

#[test]
fn every_event_type_round_trips_through_json_and_stream_fields() {
    for &t in EventType::ALL {
        let original = envelope(sample(t));
        let text = original.to_json_string();
        assert_eq!(Envelope::from_json_str(&text).unwrap(), original, "{t}");
        let fields = original.to_stream_fields();
        assert_eq!(
            Envelope::from_stream_fields(fields).unwrap(),
            original,
            "{t}"
        );
        assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
    }
}

#[test]
fn wire_names_are_camel_case_as_in_design() {
    let v = sample_json();
    for field in [
        "eventId",
        "eventType",
        "eventVersion",
        "tenantId",
        "seq",
        "aggregateId",
        "aggregateVersion",
        "occurredAt",
        "source",
        "correlationId",
        "payload",
    ] {
        assert!(v.get(field).is_some(), "missing {field} in {v}");
    }
    assert_eq!(v["eventType"], "user.email_changed");
    assert_eq!(v["eventVersion"], "1.2");
    assert_eq!(v["occurredAt"], "2025-10-04T15:30:00.000Z");
    assert_eq!(v["payload"]["fullName"], "Ada Lovelace");
}

#[test]
fn a_missing_required_field_is_rejected_naming_it() {
    for field in [
        "eventId",
        "eventType",
        "eventVersion",
        "tenantId",
        "seq",
        "aggregateId",
        "aggregateVersion",
        "occurredAt",
        "source",
        "payload",
    ] {
        let mut v = sample_json();
        v.as_object_mut().unwrap().remove(field);
        let err = Envelope::from_json(v).unwrap_err();
        assert_eq!(err, ContractError::MissingField(field.into()));
        assert!(err.to_string().contains(field));
    }
}

#[test]
fn a_missing_payload_field_is_rejected_naming_it() {
    let mut v = sample_json();
    v["payload"].as_object_mut().unwrap().remove("email");
    let err = Envelope::from_json(v).unwrap_err();
    assert!(err.to_string().contains("payload"), "{err}");
    assert!(err.to_string().contains("email"), "{err}");
}

#[test]
fn invalid_values_are_rejected_naming_the_field() {
    let cases = [
        ("eventId", json!("not-a-uuid")),
        ("tenantId", json!(12)),
        ("seq", json!(0)),
        ("seq", json!("3")),
        ("aggregateVersion", json!(-1)),
        ("occurredAt", json!("yesterday")),
        ("aggregateId", json!("")),
        ("eventType", json!("user.teleported")),
        ("eventVersion", json!("one")),
    ];
    for (field, value) in cases {
        let mut v = sample_json();
        v[field] = value.clone();
        match Envelope::from_json(v).unwrap_err() {
            ContractError::InvalidField { field: f, .. } => assert_eq!(f, field, "{value}"),
            other => panic!("{field}={value}: {other:?}"),
        }
    }
}

#[test]
fn unknown_fields_are_tolerated() {
    let mut v = sample_json();
    v["addedInMinor"] = json!({"anything": true});
    v["payload"]["nickname"] = json!("ada");
    v["eventVersion"] = json!("1.7");
    let env = Envelope::from_json(v).unwrap();
    assert_eq!(env.event_version, EventVersion { major: 1, minor: 7 });
    assert_eq!(env.event_type(), EventType::UserEmailChanged);
}

#[test]
fn an_unknown_major_version_is_rejected() {
    for version in ["2.0", "0.9"] {
        let mut v = sample_json();
        v["eventVersion"] = json!(version);
        assert_eq!(
            Envelope::from_json(v).unwrap_err(),
            ContractError::UnsupportedVersion {
                version: version.into(),
                supported: 1
            }
        );
    }
}

#[test]
fn garbage_is_malformed() {
    assert!(matches!(
        Envelope::from_json_str("not json"),
        Err(ContractError::Malformed(_))
    ));
    assert!(matches!(
        Envelope::from_json_str("[1,2]"),
        Err(ContractError::Malformed(_))
    ));
    assert_eq!(
        Envelope::from_stream_fields([("foo", "bar")]).unwrap_err(),
        ContractError::MissingField("envelope".into())
    );
}

#[test]
fn payloads_have_no_secret_fields() {
    for &t in EventType::ALL {
        let text = sample(t).payload_json().to_string().to_lowercase();
        for secret in ["password", "hash", "mfa", "secret", "token"] {
            assert!(!text.contains(secret), "{t} payload mentions {secret}");
        }
    }
}

/// Pins the partition function forever: these tenants must always land in these partitions.
/// (The figures were computed by an independent FNV-1a implementation, not by this crate.)
#[test]
fn partition_vector_holds() {
    let vector: [(&str, u32, u32); 12] = PARTITION_VECTOR;
    for (tenant, p8, p16) in vector {
        let t = Uuid::parse_str(tenant).unwrap();
        assert_eq!(partition_of(t, 8), p8, "{tenant} of 8");
        assert_eq!(partition_of(t, 16), p16, "{tenant} of 16");
    }
    let used: std::collections::BTreeSet<u32> = vector.iter().map(|v| v.1).collect();
    assert!(
        used.len() >= 4,
        "the vector should exercise several partitions"
    );
}

const PARTITION_VECTOR: [(&str, u32, u32); 12] = [
    ("00000000-0000-0000-0000-000000000000", 5, 5),
    ("00000000-0000-0000-0000-000000000001", 2, 2),
    ("b0a6e370-5d2f-4c1e-9f5b-0c6f1d2e3a4b", 5, 13),
    ("0192f0c4-7b6a-7c3e-8a1b-2c3d4e5f6a7b", 1, 1),
    ("ffffffff-ffff-ffff-ffff-ffffffffffff", 5, 5),
    ("6ba7b810-9dad-11d1-80b4-00c04fd430c8", 4, 12),
    ("6ba7b811-9dad-11d1-80b4-00c04fd430c8", 7, 15),
    ("123e4567-e89b-12d3-a456-426614174000", 0, 0),
    ("f47ac10b-58cc-4372-a567-0e02b2c3d479", 2, 10),
    ("3fa85f64-5717-4562-b3fc-2c963f66afa6", 5, 5),
    ("a8098c1a-f86e-11da-bd1a-00112474ec00", 1, 9),
    ("01890a5d-ac96-774b-bcce-b302099a8057", 3, 3),
];

#[test]
fn keys_follow_the_design() {
    let keys = StreamKeys::new("tsync", 8).unwrap();
    assert_eq!(keys.events(3), "tsync:events:{3}");
    assert_eq!(keys.dlq("crm"), "tsync:dlq:crm");
    assert_eq!(keys.lock("nightly"), "tsync:lock:nightly");
    assert_eq!(keys.all_events().len(), 8);
    assert_eq!(
        keys.events_for(tenant()),
        keys.events(partition_of(tenant(), 8))
    );
    assert!(StreamKeys::new("tsync", 0).is_none());
    assert!(StreamKeys::new("a{b", 8).is_none());
    assert!(StreamKeys::new("", 8).is_none());
}

#[test]
fn hash_slots_match_redis_cluster() {
    // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
    assert_eq!(hash_slot("123456789"), 0x31C3);
    assert_eq!(hash_slot("foo"), 12182);
    assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
    assert_eq!(
        hash_slot("foo{}{bar}"),
        hash_slot("foo{}{bar}"),
        "an empty tag hashes the key"
    );
    assert_ne!(hash_slot("foo{}{bar}"), hash_slot("bar"));
    assert_eq!(hash_slot("foo{{bar}}zap"), hash_slot("{bar"));
}

/// Every key `StreamKeys` builds, classified for Redis Cluster: a key used alone may land in any
/// slot; a group used by one script (or multi-key command) must share one slot. The lists are
/// checked against the methods in `keys.rs`, so a new key must be classified here (and its
/// group, if any, checked) before it can break cluster mode unnoticed.
#[test]
fn every_key_pattern_has_its_cluster_slot_rule() {
    // A SCAN pattern is not a key: `tenant_keys_pattern` names the partition's hash tag, so the
    // scan goes to the one node that owns it.
    const NOT_KEYS: [&str; 5] = [
        "new",
        "namespace",
        "partitions",
        "partition_of",
        "tenant_keys_pattern",
    ];
    const SINGLE: [&str; 22] = [
        "events",
        "relay_epoch",
        "events_for",
        "all_events",
        "dlq",
        "credit_stream",
        "app_credit_stream",
        "all_app_credit_streams",
        "credit_balance",
        "credit_operation",
        "credit_prices",
        "credit_allocations",
        "credit_grants",
        "credit_grant_order",
        "credit_failures",
        "all_credit_streams",
        "revoked_session",
        "status",
        "resyncs",
        "full_syncs",
        "lag_history",
        "lifecycle",
    ];
    const SINGLE_MORE: [&str; 1] = ["lock"];
    const GROUPS: [&str; 3] = [
        "relay_publish_keys",
        "credit_consume_keys",
        "credit_mirror_keys",
    ];
    let source = include_str!("keys.rs");
    let body = &source[source.find("impl StreamKeys {").unwrap()..];
    let body = &body[..body.find("\nimpl ").unwrap()];
    let methods: Vec<&str> = body
        .split("pub fn ")
        .skip(1)
        .map(|rest| &rest[..rest.find('(').unwrap()])
        .collect();
    let known: Vec<&str> = NOT_KEYS
        .iter()
        .chain(&SINGLE)
        .chain(&SINGLE_MORE)
        .chain(&GROUPS)
        .copied()
        .collect();
    for m in &methods {
        assert!(
            known.contains(m),
            "StreamKeys::{m} is not classified for Redis Cluster here"
        );
    }
    for k in &known {
        assert!(
            methods.contains(k),
            "{k} is listed here but StreamKeys has no such method"
        );
    }

    let keys = StreamKeys::new("tsync", 8).unwrap();
    let mut slots_used = std::collections::HashSet::new();
    for i in 0..200u128 {
        let tenant = Uuid::from_u128(i * 0x9e37_79b9_7f4a_7c15);
        let partition = keys.partition_of(tenant);
        for app in ["crm", "hrms", "projects"] {
            let groups = [
                keys.relay_publish_keys(partition),
                keys.credit_consume_keys(tenant, app, &format!("op-{i}")),
                keys.credit_mirror_keys(tenant, app),
            ];
            for group in groups {
                let slot = hash_slot(&group[0]);
                assert!(
                    group.iter().all(|k| hash_slot(k) == slot),
                    "{group:?} spans slots"
                );
                slots_used.insert(slot);
            }
            // The mirror and the stream its consumptions are appended to share the slot too.
            assert_eq!(
                hash_slot(&keys.credit_balance(tenant, app)),
                hash_slot(&keys.app_credit_stream(partition, app))
            );
        }
    }
    // The partitions spread over the cluster: not one slot for everything.
    assert!(
        slots_used.len() >= 8,
        "partition tags should spread: {slots_used:?}"
    );
}
