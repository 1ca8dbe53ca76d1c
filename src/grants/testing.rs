//! Proptest strategies for grants and requests, shared by the grant and authz tests.
//! Alphabets are small on purpose so random parents and children overlap often.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{ApprovalRule, Constraint, Grant, GrantSet, Scalar};

pub fn scalar() -> impl Strategy<Value = Scalar> {
    prop_oneof![
        prop::sample::select(vec!["x", "xy", "xz", "5", "", "x\"\\\n\u{1}é"])
            .prop_map(|s| Scalar::String(s.to_owned())),
        (-3i64..6).prop_map(Scalar::Integer),
        any::<bool>().prop_map(Scalar::Bool),
    ]
}

pub fn constraint() -> impl Strategy<Value = Constraint> {
    prop_oneof![
        scalar().prop_map(Constraint::Equals),
        prop::collection::vec(scalar(), 1..5).prop_map(|mut v| {
            let mut seen = Vec::new();
            v.retain(|s| {
                let new = !seen.contains(s);
                seen.push(s.clone());
                new
            });
            Constraint::OneOf(v)
        }),
        (-3i64..6, 0i64..6).prop_map(|(min, w)| Constraint::Range { min, max: min + w }),
        prop::sample::select(vec!["", "x", "xy", "x\"y"])
            .prop_map(|p| Constraint::Prefix(p.to_owned())),
    ]
}

pub fn operation_pattern() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "*",
        "deploy.*",
        "deploy.x",
        "deploy.x.*",
        "deploy.x.y",
        "db.*",
        "db.migrate",
        "deploy",
    ])
    .prop_map(str::to_owned)
}

pub fn resource_pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["prod", "a", "*", "**"]), 1..4)
        .prop_map(|segs| segs.join("/"))
}

pub fn grant() -> impl Strategy<Value = Grant> {
    (
        operation_pattern(),
        resource_pattern(),
        prop::sample::select(vec![30u64, 60, 120]),
        prop::collection::btree_map(
            prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned),
            constraint(),
            0..3,
        ),
        any::<bool>(),
        prop::option::of((1u32..3, prop::sample::select(vec!["g", "h"]))),
    )
        .prop_map(
            |(operation, resource, ttl, params, params_any, approval)| Grant {
                operation,
                resource,
                max_ttl: Duration::from_secs(ttl),
                params: params.into_iter().collect::<BTreeMap<_, _>>(),
                params_any,
                approval: approval.map(|(required, group)| ApprovalRule {
                    required,
                    group: group.to_owned(),
                }),
            },
        )
}

pub fn grant_set() -> impl Strategy<Value = GrantSet> {
    prop::collection::vec(grant(), 1..4).prop_map(|grants| GrantSet { grants })
}

pub fn param_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        scalar().prop_map(|s| match s {
            Scalar::String(s) => Value::String(s),
            Scalar::Integer(i) => json!(i),
            Scalar::Bool(b) => json!(b),
        }),
        Just(json!(5.0)),
        Just(json!(1.5)),
        Just(json!(null)),
        Just(json!(["x"])),
        Just(json!({"x": 1})),
        Just(json!("xyz")),
    ]
}

/// (operation, resource, params)
pub fn request() -> impl Strategy<Value = (String, String, Value)> {
    (
        prop::sample::select(vec![
            "deploy",
            "deploy.x",
            "deploy.x.y",
            "deploy.x.y.z",
            "db.migrate",
            "dbx.y",
            "deployx.y",
        ])
        .prop_map(str::to_owned),
        prop::collection::vec(prop::sample::select(vec!["prod", "a", "b"]), 1..5)
            .prop_map(|segs| segs.join("/")),
        prop::collection::btree_map(
            prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(str::to_owned),
            param_value(),
            0..4,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect())),
    )
}
