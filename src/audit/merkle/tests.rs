//! Known-answer vectors (transparency-dev's RFC 6962 test data, laid beside the clone in
//! `../shared/testdata/rfc6962`) and round trips of proofs built from stored nodes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64ct::{Base64, Encoding};

use super::*;

fn vectors(kind: &str) -> Vec<(PathBuf, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/rfc6962")
        .join(kind);
    assert!(
        dir.is_dir(),
        "the RFC 6962 vectors are missing: {} (CI lays shared/ beside the clone)",
        dir.display()
    );
    let mut out = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                out.push((p, v));
            }
        }
    }
    assert!(out.len() > 20, "too few vectors in {kind}");
    out
}

fn bytes(v: &serde_json::Value) -> Vec<u8> {
    v.as_str()
        .map(|s| Base64::decode_vec(s).unwrap())
        .unwrap_or_default()
}

/// `None` when some proof element is not a 32-byte hash (only in should-fail vectors).
fn proof(v: &serde_json::Value) -> Option<Vec<Hash>> {
    v.as_array()
        .map(|a| a.iter().map(|h| Hash::try_from(bytes(h)).ok()).collect())
        .unwrap_or(Some(Vec::new()))
}

/// Runs every vector of `kind` through `verify` (the vector and its proof; a proof that does not
/// decode fails): each must pass or fail as its `wantErr` says, and there must be enough of
/// both.
fn check_vectors(
    kind: &str,
    verify: impl Fn(&serde_json::Value, &[Hash]) -> Result<(), ProofError>,
) {
    let (mut good, mut bad) = (0, 0);
    for (path, v) in vectors(kind) {
        let want_err = v["wantErr"].as_bool().unwrap_or(false);
        let result = proof(&v["proof"]).map(|p| verify(&v, &p));
        let ok = matches!(result, Some(Ok(())));
        assert_eq!(ok, !want_err, "{}: {result:?}", path.display());
        if want_err {
            bad += 1;
        } else {
            good += 1;
        }
    }
    assert!(good > 5 && bad > 20, "{good} good, {bad} bad");
}

#[test]
fn inclusion_vectors_pass_and_mutations_fail() {
    check_vectors("inclusion", |v, p| {
        verify_inclusion(
            v["leafIdx"].as_u64().unwrap(),
            v["treeSize"].as_u64().unwrap(),
            &bytes(&v["leafHash"]),
            p,
            &bytes(&v["root"]),
        )
    });
}

#[test]
fn consistency_vectors_pass_and_mutations_fail() {
    check_vectors("consistency", |v, p| {
        verify_consistency(
            v["size1"].as_u64().unwrap(),
            v["size2"].as_u64().unwrap(),
            p,
            &bytes(&v["root1"]),
            &bytes(&v["root2"]),
        )
    });
}

/// A naive MTH straight from RFC 6962 §2.1, to check everything else against.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// Builds a log of `n` leaves the way the store does, keeping every perfect node.
fn stored(n: u64) -> (Vec<Hash>, HashMap<(u32, u64), Hash>) {
    let mut range = CompactRange::default();
    let mut nodes = HashMap::new();
    let mut leaves = Vec::new();
    for i in 0..n {
        let leaf = leaf_hash(format!("entry {i}").as_bytes());
        leaves.push(leaf);
        for (level, index, hash) in range.push(leaf) {
            nodes.insert((level, index), hash);
        }
        assert_eq!(range.root(), mth(&leaves), "root at size {}", i + 1);
    }
    (leaves, nodes)
}

#[test]
fn proofs_from_stored_nodes_verify_for_every_index_and_size() {
    let (leaves, nodes) = stored(70);
    let mut lookup = |level: u32, index: u64| -> Result<Hash, ()> {
        nodes.get(&(level, index)).copied().ok_or(())
    };
    for size in 1..=70u64 {
        let root = mth(&leaves[..size as usize]);
        assert_eq!(range_root(0, size, &mut lookup).unwrap(), root);
        let rebuilt = CompactRange::from_nodes(size, &mut lookup).unwrap();
        assert_eq!(rebuilt.root(), root);
        for index in 0..size {
            let p = inclusion_proof(index, size, &mut lookup).unwrap();
            verify_inclusion(index, size, &leaves[index as usize], &p, &root).unwrap();
            // The same proof for the neighbour's leaf, or another index, must fail.
            let other = leaves[((index + 1) % size) as usize];
            if size > 1 {
                assert!(verify_inclusion(index, size, &other, &p, &root).is_err());
                assert!(verify_inclusion(
                    (index + 1) % size,
                    size,
                    &leaves[index as usize],
                    &p,
                    &root
                )
                .is_err());
            }
        }
        for old in 1..=size {
            let old_root = mth(&leaves[..old as usize]);
            let p = consistency_proof(old, size, &mut lookup).unwrap();
            verify_consistency(old, size, &p, &old_root, &root).unwrap();
            if old < size {
                let mut forged = old_root;
                forged[0] ^= 1;
                assert!(verify_consistency(old, size, &p, &forged, &root).is_err());
            }
        }
    }
}

#[test]
fn mutated_proofs_are_refused() {
    let (leaves, nodes) = stored(13);
    let mut lookup = |level: u32, index: u64| -> Result<Hash, ()> {
        nodes.get(&(level, index)).copied().ok_or(())
    };
    let root = mth(&leaves);
    let p = inclusion_proof(5, 13, &mut lookup).unwrap();
    for i in 0..p.len() {
        for bit in [0usize, 7, 255] {
            let mut q = p.clone();
            q[i][bit / 8] ^= 1 << (bit % 8);
            assert!(verify_inclusion(5, 13, &leaves[5], &q, &root).is_err());
        }
        let mut shorter = p.clone();
        shorter.remove(i);
        assert!(verify_inclusion(5, 13, &leaves[5], &shorter, &root).is_err());
    }
    let mut longer = p.clone();
    longer.push(root);
    assert!(verify_inclusion(5, 13, &leaves[5], &longer, &root).is_err());
    // Sizes whose path has another shape (a size with the same shape and root is the
    // checkpoint's business: the root commits to the size).
    assert!(verify_inclusion(5, 6, &leaves[5], &p, &root).is_err());
    assert!(verify_inclusion(5, 17, &leaves[5], &p, &root).is_err());
    let old_root = mth(&leaves[..6]);
    let c = consistency_proof(6, 13, &mut lookup).unwrap();
    verify_consistency(6, 13, &c, &old_root, &root).unwrap();
    assert!(verify_consistency(6, 13, &c[1..], &old_root, &root).is_err());
    assert!(verify_consistency(5, 13, &c, &old_root, &root).is_err());
    assert!(verify_consistency(6, 13, &c, &root, &old_root).is_err());
}
