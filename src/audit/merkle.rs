//! RFC 6962 / RFC 9162 Merkle tree hashing: leaf and node hashes, the compact range the writer
//! keeps in memory, proof construction over stored subtree hashes, and proof verification.
//!
//! Pure functions only: no I/O, no device. Proof construction takes a lookup of *perfect*
//! subtree hashes (`level`, `index`: the hash over leaves `index·2^level .. (index+1)·2^level`),
//! so the store answers any proof with O(log n) indexed reads and never recomputes the tree.

use sha2::{Digest, Sha256};

/// A SHA-256 tree hash.
pub type Hash = [u8; 32];

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index or sizes cannot describe a proof (index past the end, old size larger).
    #[error("proof parameters out of range: {0}")]
    OutOfRange(&'static str),
    /// The proof has too few or too many hashes for its sizes.
    #[error("proof has the wrong number of hashes")]
    WrongLength,
    /// The recomputed root differs from the expected one.
    #[error("proof does not lead to the expected root")]
    RootMismatch,
}

/// `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &[u8], right: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The root over `leaves` (leaf hashes), computed with a compact range: O(n) time, O(log n)
/// memory. For verifiers that hold every entry.
pub fn root_of(leaves: &[Hash]) -> Hash {
    let mut range = CompactRange::default();
    for leaf in leaves {
        range.push(*leaf);
    }
    range.root()
}

/// The right edge of a tree: the perfect subtrees its size decomposes into, largest first.
/// Appending a leaf merges equal-sized subtrees; each merge is a new perfect node that the
/// store keeps, so a proof never needs more than O(log n) lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// (level, hash), levels strictly decreasing.
    peaks: Vec<(u32, Hash)>,
}

impl CompactRange {
    /// Rebuilds the range of a tree of `size` leaves from its perfect subtrees, fetched by
    /// `node(level, index)`.
    pub fn from_nodes<E>(
        size: u64,
        mut node: impl FnMut(u32, u64) -> Result<Hash, E>,
    ) -> Result<Self, E> {
        let peaks = Self::peak_positions(size)
            .into_iter()
            .map(|(level, index)| Ok((level, node(level, index)?)))
            .collect::<Result<_, E>>()?;
        Ok(Self { size, peaks })
    }

    /// The perfect subtrees a tree of `size` leaves is made of, as (level, index), largest
    /// (leftmost) first: what [`CompactRange::from_nodes`] fetches.
    pub fn peak_positions(size: u64) -> Vec<(u32, u64)> {
        let mut positions = Vec::new();
        let mut start = 0u64;
        for level in (0..64u32).rev() {
            if size & (1u64 << level) != 0 {
                positions.push((level, start >> level));
                start += 1u64 << level;
            }
        }
        positions
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect subtrees' hashes, largest (leftmost) first: at [`Self::peak_positions`].
    pub fn peak_hashes(&self) -> impl Iterator<Item = &Hash> {
        self.peaks.iter().map(|(_, hash)| hash)
    }

    /// Appends a leaf hash; returns the perfect nodes this completes, as (level, index, hash),
    /// the leaf itself first (level 0).
    pub fn push(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let index = self.size;
        let mut made = vec![(0, index, leaf)];
        let mut current = (0u32, leaf);
        while let Some(&(level, left)) = self.peaks.last() {
            if level != current.0 {
                break;
            }
            self.peaks.pop();
            let merged = node_hash(&left, &current.1);
            current = (level + 1, merged);
            made.push((level + 1, index >> (level + 1), merged));
        }
        self.peaks.push(current);
        self.size += 1;
        made
    }

    /// The tree's root hash.
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        let Some(&(_, mut acc)) = iter.next() else {
            return empty_root();
        };
        for (_, peak) in iter {
            acc = node_hash(peak, &acc);
        }
        acc
    }
}

/// The largest power of two strictly below `n` (`n` ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH over leaves `lo..hi` of a tree whose subtree boundaries follow RFC 6962 (every range
/// this module asks for does), from perfect nodes: O(log n) lookups.
pub fn range_root<E>(
    lo: u64,
    hi: u64,
    node: &mut impl FnMut(u32, u64) -> Result<Hash, E>,
) -> Result<Hash, E> {
    let n = hi - lo;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        let level = n.trailing_zeros();
        return node(level, lo >> level);
    }
    let k = split(n);
    let left = range_root(lo, lo + k, node)?;
    let right = range_root(lo + k, hi, node)?;
    Ok(node_hash(&left, &right))
}

/// The audit path of leaf `index` in the tree of `size` leaves (RFC 6962 §2.1.1), bottom up.
pub fn inclusion_proof<E>(
    index: u64,
    size: u64,
    node: &mut impl FnMut(u32, u64) -> Result<Hash, E>,
) -> Result<Vec<Hash>, E> {
    let mut proof = Vec::new();
    path(index, 0, size, node, &mut proof)?;
    Ok(proof)
}

fn path<E>(
    m: u64,
    lo: u64,
    hi: u64,
    node: &mut impl FnMut(u32, u64) -> Result<Hash, E>,
    out: &mut Vec<Hash>,
) -> Result<(), E> {
    let n = hi - lo;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < lo + k {
        path(m, lo, lo + k, node, out)?;
        out.push(range_root(lo + k, hi, node)?);
    } else {
        path(m, lo + k, hi, node, out)?;
        out.push(range_root(lo, lo + k, node)?);
    }
    Ok(())
}

/// The consistency proof between the trees of `old` and `new` leaves (RFC 6962 §2.1.2).
/// Empty when `old` is 0 or equal to `new`.
pub fn consistency_proof<E>(
    old: u64,
    new: u64,
    node: &mut impl FnMut(u32, u64) -> Result<Hash, E>,
) -> Result<Vec<Hash>, E> {
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(old, 0, new, true, node, &mut proof)?;
    }
    Ok(proof)
}

fn subproof<E>(
    m: u64,
    lo: u64,
    hi: u64,
    whole: bool,
    node: &mut impl FnMut(u32, u64) -> Result<Hash, E>,
    out: &mut Vec<Hash>,
) -> Result<(), E> {
    let n = hi - lo;
    if m == n {
        if !whole {
            out.push(range_root(lo, hi, node)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(m, lo, lo + k, whole, node, out)?;
        out.push(range_root(lo + k, hi, node)?);
    } else {
        subproof(m - k, lo + k, hi, false, node, out)?;
        out.push(range_root(lo, lo + k, node)?);
    }
    Ok(())
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves with root `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[Hash],
    root: &[u8],
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange("index is not below the tree size"));
    }
    let Ok(leaf) = Hash::try_from(leaf) else {
        return Err(ProofError::RootMismatch);
    };
    let (mut f, mut s) = (index, size - 1);
    let mut r = leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if r.as_slice() != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `new` leaves with root `new_root` extends the tree of `old`
/// leaves with root `old_root` (RFC 9162 §2.1.4.2). A proof from the empty tree is refused:
/// it proves nothing, and accepting one would let any root pass.
pub fn verify_consistency(
    old: u64,
    new: u64,
    proof: &[Hash],
    old_root: &[u8],
    new_root: &[u8],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::OutOfRange(
            "the old tree is larger than the new",
        ));
    }
    if old == 0 {
        return Err(ProofError::OutOfRange("consistency with the empty tree"));
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    let mut hashes: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        let Ok(old_root) = Hash::try_from(old_root) else {
            return Err(ProofError::RootMismatch);
        };
        hashes.push(old_root);
    }
    hashes.extend_from_slice(proof);
    let Some((first, rest)) = hashes.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr.as_slice() != old_root || sr.as_slice() != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
