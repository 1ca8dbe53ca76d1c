//! Attenuation across constraint kinds: every ordered pair of (equals, one-of, range, prefix,
//! absent) as parent over child on one parameter, each with its expected answer, checked at
//! every layer that relies on it:
//!
//! * `cover::constraint_covers` and `cover::covers`;
//! * the meaning behind the answer: a witness value the child accepts, which the parent
//!   accepts too exactly when the pair is covered (so "not covered" is never mere caution);
//! * issuance: the CA refuses the child (as an agent and as an intermediate) under an
//!   intermediate carrying the parent, with `CaError::Escalation`;
//! * the decision: `decide` allows the witness request through the chain when covered and
//!   denies it with `grant_chain_escalation` otherwise.
//!
//! A "covered" that should not be (the prefix-over-range mutation of issue 20) is a privilege
//! escalation, so each pair is spelled out rather than generated.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::*;
use crate::ca::CaError;
use crate::grants::Constraint;

/// What the parent or the child says about parameter `p`.
#[derive(Clone, Copy, Debug)]
enum P {
    /// `p` is not named (and the grant is not `params_any`).
    Absent,
    /// `p` is not named and the grant is `params_any` (parents only).
    Any,
    /// `params.p = <this inline table>`.
    C(&'static str),
}

use P::{Absent, Any, C};

struct Case {
    parent: P,
    child: P,
    covered: bool,
    /// A value of `p` the child accepts (`None`: the request leaves `p` out). The parent
    /// accepts it exactly when `covered`.
    witness: Option<Value>,
}

fn case(parent: P, child: P, covered: bool, witness: Option<Value>) -> Case {
    Case {
        parent,
        child,
        covered,
        witness,
    }
}

fn grant_toml(p: P) -> String {
    let mut toml = String::from(
        "[[grant]]\noperation = \"deploy.rollout\"\nresource = \"prod/api\"\nmax_ttl = \"60s\"\n",
    );
    match p {
        Absent => {}
        Any => toml.push_str("params_any = true\n"),
        C(c) => toml.push_str(&format!("params.p = {c}\n")),
    }
    toml
}

fn the_grant(p: P) -> Grant {
    GrantSet::from_toml_str(&grant_toml(p)).unwrap().grants[0].clone()
}

/// The kind's name, for messages and for the completeness check.
fn kind(p: P) -> &'static str {
    match p {
        Absent => "absent",
        Any => "absent (params_any)",
        C(_) => match the_grant(p).params.get("p") {
            Some(Constraint::Equals(_)) => "equals",
            Some(Constraint::OneOf(_)) => "one_of",
            Some(Constraint::Range { .. }) => "range",
            Some(Constraint::Prefix(_)) => "prefix",
            None => unreachable!("a C case always constrains p"),
        },
    }
}

fn witness_request(witness: &Option<Value>) -> Request {
    let params = match witness {
        Some(v) => json!({ "p": v }),
        None => json!({}),
    };
    request("deploy.rollout", "prod/api", params)
}

fn cases() -> Vec<Case> {
    let s = |x: &str| Some(json!(x));
    let i = |x: i64| Some(json!(x));
    vec![
        // --- parent equals ---
        case(C("{ equals = 3 }"), C("{ equals = 3 }"), true, i(3)),
        case(C("{ equals = 3 }"), C("{ equals = 4 }"), false, i(4)),
        case(C("{ equals = 3 }"), C("{ equals = \"3\" }"), false, s("3")),
        case(C("{ equals = 3 }"), C("{ one_of = [3] }"), true, i(3)),
        case(C("{ equals = 3 }"), C("{ one_of = [3, 4] }"), false, i(4)),
        case(C("{ equals = 3 }"), C("{ min = 3, max = 3 }"), true, i(3)),
        case(C("{ equals = 3 }"), C("{ min = 3, max = 4 }"), false, i(4)),
        case(
            C("{ equals = \"reg/a\" }"),
            C("{ prefix = \"reg/a\" }"),
            false,
            s("reg/ab"),
        ),
        case(
            C("{ equals = \"3\" }"),
            C("{ prefix = \"3\" }"),
            false,
            s("34"),
        ),
        case(C("{ equals = 3 }"), Absent, false, None),
        // --- parent one_of ---
        case(C("{ one_of = [1, 2, 3] }"), C("{ equals = 2 }"), true, i(2)),
        case(
            C("{ one_of = [1, 2, 3] }"),
            C("{ equals = \"2\" }"),
            false,
            s("2"),
        ),
        case(
            C("{ one_of = [1, 2, 3] }"),
            C("{ one_of = [1, 3] }"),
            true,
            i(3),
        ),
        case(
            C("{ one_of = [1, 2, 3] }"),
            C("{ one_of = [1, 4] }"),
            false,
            i(4),
        ),
        case(
            C("{ one_of = [1, 2, 3] }"),
            C("{ min = 1, max = 3 }"),
            true,
            i(2),
        ),
        case(
            C("{ one_of = [1, 2, 3] }"),
            C("{ min = 0, max = 3 }"),
            false,
            i(0),
        ),
        case(
            C("{ one_of = [\"reg/a\"] }"),
            C("{ prefix = \"reg/a\" }"),
            false,
            s("reg/a/b"),
        ),
        case(C("{ one_of = [1, 2, 3] }"), Absent, false, None),
        // --- parent range ---
        case(C("{ min = 1, max = 10 }"), C("{ equals = 5 }"), true, i(5)),
        case(
            C("{ min = 1, max = 10 }"),
            C("{ equals = 11 }"),
            false,
            i(11),
        ),
        case(
            C("{ min = 1, max = 10 }"),
            C("{ equals = \"5\" }"),
            false,
            s("5"),
        ),
        case(
            C("{ min = 0, max = 1 }"),
            C("{ equals = true }"),
            false,
            Some(json!(true)),
        ),
        case(
            C("{ min = 1, max = 10 }"),
            C("{ one_of = [1, 10] }"),
            true,
            i(10),
        ),
        case(
            C("{ min = 1, max = 10 }"),
            C("{ one_of = [1, 11] }"),
            false,
            i(11),
        ),
        case(
            C("{ min = 1, max = 10 }"),
            C("{ one_of = [1, \"2\"] }"),
            false,
            s("2"),
        ),
        case(
            C("{ min = 1, max = 10 }"),
            C("{ min = 2, max = 9 }"),
            true,
            i(9),
        ),
        case(
            C("{ min = 1, max = 10 }"),
            C("{ min = 0, max = 9 }"),
            false,
            i(0),
        ),
        case(
            C("{ min = 1, max = 10 }"),
            C("{ min = 2, max = 11 }"),
            false,
            i(11),
        ),
        case(
            C("{ min = 1, max = 10 }"),
            C("{ prefix = \"1\" }"),
            false,
            s("1"),
        ),
        case(C("{ min = 1, max = 10 }"), Absent, false, None),
        // --- parent prefix ---
        case(
            C("{ prefix = \"reg/\" }"),
            C("{ equals = \"reg/a\" }"),
            true,
            s("reg/a"),
        ),
        case(
            C("{ prefix = \"reg/\" }"),
            C("{ equals = \"other\" }"),
            false,
            s("other"),
        ),
        case(C("{ prefix = \"1\" }"), C("{ equals = 1 }"), false, i(1)),
        case(
            C("{ prefix = \"reg/\" }"),
            C("{ one_of = [\"reg/a\", \"reg/b\"] }"),
            true,
            s("reg/b"),
        ),
        case(
            C("{ prefix = \"reg/\" }"),
            C("{ one_of = [\"reg/a\", \"x\"] }"),
            false,
            s("x"),
        ),
        // Issue 20's surviving mutation: a string prefix never covers integers.
        case(
            C("{ prefix = \"reg/\" }"),
            C("{ min = 1, max = 2 }"),
            false,
            i(1),
        ),
        case(
            C("{ prefix = \"\" }"),
            C("{ min = 0, max = 0 }"),
            false,
            i(0),
        ),
        case(
            C("{ prefix = \"reg/\" }"),
            C("{ prefix = \"reg/a/\" }"),
            true,
            s("reg/a/x"),
        ),
        case(
            C("{ prefix = \"reg/\" }"),
            C("{ prefix = \"re\" }"),
            false,
            s("rex"),
        ),
        case(C("{ prefix = \"reg/\" }"), Absent, false, None),
        // --- parent absent: `p` is refused, so any child that names it escalates ---
        case(Absent, C("{ equals = 3 }"), false, i(3)),
        case(Absent, C("{ one_of = [1, 2] }"), false, i(1)),
        case(Absent, C("{ min = 1, max = 2 }"), false, i(1)),
        case(Absent, C("{ prefix = \"reg/\" }"), false, s("reg/x")),
        case(Absent, Absent, true, None),
        // --- parent absent under params_any: anything goes for `p` ---
        case(Any, C("{ equals = 3 }"), true, i(3)),
        case(Any, C("{ one_of = [1, \"a\"] }"), true, s("a")),
        case(Any, C("{ min = -5, max = 5 }"), true, i(-5)),
        case(Any, C("{ prefix = \"reg/\" }"), true, s("reg/x")),
        case(Any, Absent, true, None),
    ]
}

#[test]
fn the_table_covers_every_pair_of_kinds_both_ways() {
    let kinds = ["equals", "one_of", "range", "prefix", "absent"];
    let seen: BTreeSet<(&str, &str)> = cases()
        .iter()
        .map(|c| (kind(c.parent), kind(c.child)))
        .collect();
    for parent in kinds {
        for child in kinds {
            assert!(
                seen.contains(&(parent, child)),
                "no case for {parent} over {child}"
            );
        }
    }
}

#[test]
fn coverage_between_constraint_kinds_is_exact() {
    for c in cases() {
        let what = format!(
            "{} {:?} over {} {:?}",
            kind(c.parent),
            c.parent,
            kind(c.child),
            c.child
        );
        let (parent, child) = (the_grant(c.parent), the_grant(c.child));
        if let (Some(p), Some(ch)) = (parent.params.get("p"), child.params.get("p")) {
            assert_eq!(
                crate::authz::cover::constraint_covers(p, ch),
                c.covered,
                "constraint_covers: {what}"
            );
        }
        assert_eq!(covers(&parent, &child), c.covered, "covers: {what}");

        // The answer means what it says: the witness is the child's, and the parent takes it
        // exactly when the child is covered.
        let req = witness_request(&c.witness);
        let Value::Object(params) = &req.params else {
            unreachable!("witness requests are objects")
        };
        assert_eq!(
            check_grant(&child, &req.operation, &req.resource, params),
            Ok(()),
            "the child accepts the witness: {what}"
        );
        assert_eq!(
            check_grant(&parent, &req.operation, &req.resource, params).is_ok(),
            c.covered,
            "the parent accepts the witness iff covered: {what}"
        );
    }
}

#[test]
fn the_decision_denies_a_child_its_parent_does_not_cover() {
    for c in cases() {
        let what = format!(
            "{} over {}: {:?} over {:?}",
            kind(c.parent),
            kind(c.child),
            c.parent,
            c.child
        );
        let chain = chain(
            agent(set(&grant_toml(c.child))),
            vec![cert(2, set(&grant_toml(c.parent)))],
        );
        let decision = decide_now(&chain, &witness_request(&c.witness));
        if c.covered {
            assert!(
                matches!(decision, Decision::Allow { grant_index: 0, .. }),
                "{what}: {decision:?}"
            );
        } else {
            assert_eq!(
                decision.deny_code(),
                Some(GrantChainEscalation),
                "{what}: {decision:?}"
            );
        }
    }
}

#[test]
fn the_ca_refuses_to_issue_a_child_its_parent_does_not_cover() {
    let root = crate::testkit::Ca::root("root");
    for c in cases() {
        let what = format!(
            "{} over {}: {:?} over {:?}",
            kind(c.parent),
            kind(c.child),
            c.parent,
            c.child
        );
        let parent = root
            .intermediate("parent", Some(&grant_toml(c.parent)), None)
            .unwrap();
        let child = grant_toml(c.child);
        let as_agent = parent.agent("child", &child);
        let as_intermediate = parent.intermediate("child", Some(&child), None);
        if c.covered {
            assert!(as_agent.is_ok(), "{what}: {:?}", as_agent.err());
            assert!(
                as_intermediate.is_ok(),
                "{what}: {:?}",
                as_intermediate.err()
            );
        } else {
            assert!(
                matches!(&as_agent, Err(CaError::Escalation { ancestor, .. }) if ancestor == "CN=parent"),
                "agent, {what}: {:?}",
                as_agent.err()
            );
            assert!(
                matches!(&as_intermediate, Err(CaError::Escalation { ancestor, .. }) if ancestor == "CN=parent"),
                "intermediate, {what}: {:?}",
                as_intermediate.err()
            );
        }
    }
}
