//! RFC 6962 / RFC 9162 Merkle tree hashing over a node's audit chain, with inclusion and
//! consistency proofs and their verification. Pure: no I/O, no database.
//!
//! Leaf `i` (0-based) is the audit row at seq `i + 1` of one node's chain, in seq order. Its leaf
//! bytes are the row's 32-byte chain hash (`SHA-256(prev_hash ‖ canonical(row))`), so
//! `leaf_hash = SHA-256(0x00 ‖ chain_hash)` and `node_hash = SHA-256(0x01 ‖ left ‖ right)`.
//!
//! Why the chain hash rather than the canonical bytes: it is already stored beside every row, so
//! a tree over millions of rows is built from one 32-byte column without re-serializing any row;
//! every leaf has the same size, so proofs and bundles stay small; and the last leaf of a tree of
//! size `n` is the chain head at seq `n`, so a tree head and the chain head can never tell two
//! different stories. A verifier still checks the row itself: it recomputes the chain hash from
//! the row's content and `prev_hash` before it looks for that hash in the tree.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// Why a proof does not hold. Each names one reason; none is ever "probably fine".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the proof has the wrong number of hashes for this index and tree size")]
    WrongLength,
    #[error("the proof does not lead to the signed root hash")]
    RootMismatch,
    #[error("a consistency proof needs 0 < old size <= new size (got {old} and {new})")]
    BadSizes { old: u64, new: u64 },
    #[error("the proof does not lead to the old root hash")]
    OldRootMismatch,
}

/// `SHA-256(0x00 ‖ leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(leaf);
    hasher.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of an empty tree: `SHA-256()`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A tree over given leaf hashes, with every level kept so that proofs cost O(log n).
///
/// Level `k` holds the roots of the aligned subtrees of `2^k` leaves; a last node without a
/// sibling moves up unchanged, which yields exactly RFC 6962's MTH for any size.
#[derive(Debug, Clone)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// Builds the tree over `leaf_hashes` (already `leaf_hash`ed), in order.
    pub fn new(leaf_hashes: Vec<Hash>) -> Tree {
        let mut levels = vec![leaf_hashes];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node_hash(left, right),
                    [alone] => *alone,
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect();
            levels.push(above);
        }
        Tree { levels }
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// RFC 6962 MTH of all leaves.
    pub fn root(&self) -> Hash {
        match self.levels.last() {
            Some(top) if top.len() == 1 => top[0],
            _ => empty_root(),
        }
    }

    /// The audit path of leaf `index` in the whole tree, leaf to root (RFC 6962 PATH).
    pub fn inclusion_proof(&self, index: u64) -> Result<Vec<Hash>, ProofError> {
        let size = self.size();
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        let mut position = usize::try_from(index).map_err(|_| ProofError::WrongLength)?;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = position ^ 1;
            if let Some(hash) = level.get(sibling) {
                proof.push(*hash);
            }
            position >>= 1;
        }
        Ok(proof)
    }

    /// The leaf hashes, in order.
    pub fn leaves(&self) -> &[Hash] {
        self.levels.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// RFC 6962 `PROOF(old, D[size])`: shows that the tree of the first `old` leaves is a prefix of
    /// this one.
    pub fn consistency_proof(&self, old: u64) -> Result<Vec<Hash>, ProofError> {
        let size = self.size();
        if old == 0 || old > size {
            return Err(ProofError::BadSizes { old, new: size });
        }
        let old = usize::try_from(old).map_err(|_| ProofError::WrongLength)?;
        let mut proof = Vec::new();
        subproof(old, self.leaves(), true, &mut proof);
        Ok(proof)
    }
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first (one per
/// set bit of the size), and the last chain hash appended. Appending a leaf costs one leaf hash
/// and, amortized, one node hash; the root costs one node hash per set bit of the size, so a
/// checkpoint never rebuilds the tree. Memory: at most 64 hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
    /// The chain hash of leaf `size - 1` (the row at seq `size`); unused while empty.
    last: Hash,
}

/// A leaf arrived out of order: the frontier is `size` leaves long, the leaf would be at `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("leaf {index} does not follow a tree of {size} leaves")]
pub struct OutOfOrder {
    pub size: u64,
    pub index: u64,
}

impl Default for Frontier {
    fn default() -> Self {
        Frontier::new()
    }
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Frontier {
        Frontier {
            size: 0,
            peaks: Vec::new(),
            last: [0; 32],
        }
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The chain hash of the last leaf (`None` while empty).
    pub fn last(&self) -> Option<Hash> {
        (self.size > 0).then_some(self.last)
    }

    /// Appends the chain hash of the row at seq `size + 1` (its leaf is `leaf_hash(chain_hash)`).
    pub fn push(&mut self, chain_hash: &Hash) {
        let mut hash = leaf_hash(chain_hash);
        // Each trailing one bit of the size is a perfect subtree the new leaf completes.
        let mut size = self.size;
        while size & 1 == 1 {
            let left = self.peaks.pop().unwrap_or_default();
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.peaks.push(hash);
        self.size += 1;
        self.last = *chain_hash;
    }

    /// Appends the chain hash of leaf `index`, refusing any other index than the next one.
    pub fn push_at(&mut self, index: u64, chain_hash: &Hash) -> Result<(), OutOfOrder> {
        if index != self.size {
            return Err(OutOfOrder {
                size: self.size,
                index,
            });
        }
        self.push(chain_hash);
        Ok(())
    }

    /// RFC 6962 MTH of the leaves so far: the peaks folded from the right.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(mut root) = peaks.next().copied() else {
            return empty_root();
        };
        for left in peaks {
            root = node_hash(left, &root);
        }
        root
    }
}

/// RFC 6962 MTH of a slice of leaf hashes (recursive definition; used for consistency proofs).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = largest_power_of_two_below(n);
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

fn largest_power_of_two_below(n: usize) -> usize {
    debug_assert!(n > 1);
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root_of(leaves));
        }
        return;
    }
    let k = largest_power_of_two_below(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, proof);
        proof.push(root_of(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, proof);
        proof.push(root_of(&leaves[..k]));
    }
}

/// RFC 9162 §2.1.3.2: checks that `leaf` (a leaf hash) is at `index` in the tree of `size`
/// leaves whose root is `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let r = walk_path(index, size - 1, *leaf, proof, |_| {})?;
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: checks that the tree of `old` leaves with root `old_root` is a prefix of
/// the tree of `new` leaves with root `new_root`.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::BadSizes { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        if old_root != new_root {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let mut fn_ = old - 1;
    let mut sn = new - 1;
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // The old tree's root is rebuilt from the hashes that join from the left only.
    let mut fr = *first;
    let sr = walk_path(fn_, sn, *first, rest, |c| fr = node_hash(c, &fr))?;
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The walk up the tree both verifications share (RFC 9162 §2.1.3.2 and §2.1.4.2): folds
/// `proof` into `seed` from node `fn_` of a level whose last node is `sn`, and returns the root
/// it reaches. `joins_from_left` sees each proof hash that joins from the left. The proof must
/// end exactly at the root.
fn walk_path(
    mut fn_: u64,
    mut sn: u64,
    seed: Hash,
    proof: &[Hash],
    mut joins_from_left: impl FnMut(&Hash),
) -> Result<Hash, ProofError> {
    let mut r = seed;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            joins_from_left(p);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    Ok(r)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // sizes below 300
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&Sha256::digest(i.to_be_bytes())))
            .collect()
    }

    /// One flipped bit: bit `bit` of byte `byte` of a hash (in a proof, of the hash at `which`).
    #[derive(Debug, Clone, Copy)]
    struct Flip {
        which: prop::sample::Index,
        bit: u8,
        byte: usize,
    }

    impl Flip {
        fn any() -> impl Strategy<Value = Flip> {
            (any::<prop::sample::Index>(), 0u8..8, 0usize..32).prop_map(|(which, bit, byte)| Flip {
                which,
                bit,
                byte,
            })
        }

        fn hash(self, mut hash: Hash) -> Hash {
            hash[self.byte] ^= 1 << self.bit;
            hash
        }

        /// `proof` with one of its hashes flipped; `None` for an empty proof.
        fn proof(self, proof: &[Hash]) -> Option<Vec<Hash>> {
            if proof.is_empty() {
                return None;
            }
            let mut flipped = proof.to_vec();
            let i = self.which.index(flipped.len());
            flipped[i] = self.hash(flipped[i]);
            Some(flipped)
        }
    }

    #[test]
    fn known_answers_of_rfc6962_hashing() {
        // SHA-256 of the empty string, and of 0x00 (the leaf hash of an empty leaf): the values
        // every RFC 6962 implementation shares (e.g. Certificate Transparency's test vectors).
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        // The CT test vector tree of 8 leaves, root from RFC 6962's reference implementation.
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let tree = Tree::new(data.iter().map(|d| leaf_hash(d)).collect());
        assert_eq!(
            hex::encode(tree.root()),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
        let three = Tree::new(data[..3].iter().map(|d| leaf_hash(d)).collect());
        assert_eq!(
            hex::encode(three.root()),
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"
        );
    }

    #[test]
    fn the_levelled_tree_and_the_recursive_definition_agree() {
        for n in 0..70 {
            let l = leaves(n);
            assert_eq!(Tree::new(l.clone()).root(), root_of(&l), "size {n}");
        }
    }

    #[test]
    fn every_proof_verifies_for_every_size_up_to_300() {
        let all = leaves(300);
        for size in 1..=300usize {
            let tree = Tree::new(all[..size].to_vec());
            let root = tree.root();
            for index in 0..size as u64 {
                let proof = tree.inclusion_proof(index).unwrap();
                let leaf = all[index as usize];
                assert_eq!(
                    verify_inclusion(&leaf, index, size as u64, &proof, &root),
                    Ok(()),
                    "inclusion {index} in {size}"
                );
            }
            // Every old size below 100; above, the edges, the middle and the powers of two
            // (root_of is linear, so all pairs up to 300 would take minutes unoptimized).
            let olds: Vec<usize> = if size <= 100 {
                (1..=size).collect()
            } else {
                let mut olds = vec![1, 2, 3, size / 2, size - 1, size];
                olds.extend((0..9).map(|k| 1 << k).filter(|&p| p <= size));
                olds
            };
            for old in olds {
                let proof = tree.consistency_proof(old as u64).unwrap();
                let old_root = root_of(&all[..old]);
                assert_eq!(
                    verify_consistency(old as u64, size as u64, &old_root, &root, &proof),
                    Ok(()),
                    "consistency {old} -> {size}"
                );
            }
        }
    }

    #[test]
    fn the_frontier_root_equals_the_full_tree_root_at_every_size() {
        let chain: Vec<Hash> = (0..300u32)
            .map(|i| Sha256::digest(i.to_be_bytes()).into())
            .collect();
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), empty_root());
        assert_eq!(frontier.last(), None);
        for (index, hash) in chain.iter().enumerate() {
            frontier.push_at(index as u64, hash).unwrap();
            let leaves: Vec<Hash> = chain[..=index].iter().map(|h| leaf_hash(h)).collect();
            assert_eq!(frontier.root(), root_of(&leaves), "size {}", index + 1);
            assert_eq!(frontier.size(), index as u64 + 1);
            assert_eq!(frontier.last(), Some(*hash));
            assert!(frontier.peaks.len() <= 9);
        }
        assert_eq!(
            frontier.push_at(7, &chain[0]),
            Err(OutOfOrder {
                size: 300,
                index: 7
            })
        );
    }

    #[test]
    fn out_of_range_and_bad_sizes_are_named() {
        let tree = Tree::new(leaves(5));
        assert_eq!(
            tree.inclusion_proof(5),
            Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            tree.consistency_proof(0),
            Err(ProofError::BadSizes { old: 0, new: 5 })
        );
        assert_eq!(
            verify_consistency(6, 5, &[0; 32], &[0; 32], &[]),
            Err(ProofError::BadSizes { old: 6, new: 5 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any flipped bit in the leaf, a proof hash or the root, a proof one hash short or
        /// long, or another index makes the inclusion proof fail. (The size is not varied: it
        /// comes signed with the root, and a proof may hold for the same root at another size.)
        #[test]
        fn a_changed_inclusion_proof_fails(
            size in 1u64..300,
            index_seed in any::<u64>(),
            flip in Flip::any(),
            wrong in 1u64..300,
        ) {
            let all = leaves(size as usize);
            let tree = Tree::new(all.clone());
            let index = index_seed % size;
            let root = tree.root();
            let proof = tree.inclusion_proof(index).unwrap();
            let leaf = all[index as usize];
            prop_assert_eq!(verify_inclusion(&leaf, index, size, &proof, &root), Ok(()));

            prop_assert!(verify_inclusion(&flip.hash(leaf), index, size, &proof, &root).is_err());
            prop_assert!(verify_inclusion(&leaf, index, size, &proof, &flip.hash(root)).is_err());
            if let Some(bad_proof) = flip.proof(&proof) {
                prop_assert!(verify_inclusion(&leaf, index, size, &bad_proof, &root).is_err());
                let mut short = proof.clone();
                short.pop();
                prop_assert!(verify_inclusion(&leaf, index, size, &short, &root).is_err());
            }
            let mut long = proof.clone();
            long.push([0; 32]);
            prop_assert!(verify_inclusion(&leaf, index, size, &long, &root).is_err());
            let other_index = (index + wrong) % size;
            if other_index != index {
                prop_assert!(verify_inclusion(&leaf, other_index, size, &proof, &root).is_err());
            }
        }

        /// Any flipped bit in either root or a proof hash, or a forked old tree, makes the
        /// consistency proof fail.
        #[test]
        fn a_changed_consistency_proof_fails(
            new in 2u64..300,
            old_seed in any::<u64>(),
            flip in Flip::any(),
        ) {
            let all = leaves(new as usize);
            let tree = Tree::new(all.clone());
            let old = 1 + old_seed % (new - 1);
            let old_root = root_of(&all[..old as usize]);
            let new_root = tree.root();
            let proof = tree.consistency_proof(old).unwrap();
            prop_assert_eq!(verify_consistency(old, new, &old_root, &new_root, &proof), Ok(()));

            let (bad_old, bad_new) = (flip.hash(old_root), flip.hash(new_root));
            prop_assert!(verify_consistency(old, new, &bad_old, &new_root, &proof).is_err());
            prop_assert!(verify_consistency(old, new, &old_root, &bad_new, &proof).is_err());
            if let Some(bad_proof) = flip.proof(&proof) {
                prop_assert!(verify_consistency(old, new, &old_root, &new_root, &bad_proof).is_err());
            }
            // A fork: the same old size with a different last leaf.
            let mut forked = all[..old as usize].to_vec();
            forked[old as usize - 1][0] ^= 1;
            prop_assert!(verify_consistency(old, new, &root_of(&forked), &new_root, &proof).is_err());
        }
    }
}
