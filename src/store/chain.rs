//! The audit chain's head and clock: what the writer ([`super::audit`]) and the anchor that keeps
//! the head outside the database ([`super::anchor`]) both speak of.

use time::OffsetDateTime;

/// The last committed row of a chain: what a checkpoint signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// 0 for an empty chain.
    pub seq: i64,
    /// [`GENESIS_HASH`] for an empty chain.
    pub hash: [u8; 32],
}

/// The hash an empty chain ends with: the `prev_hash` of its first row.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Now, truncated to the microsecond precision PostgreSQL keeps.
pub fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.microsecond() * 1_000)
        .unwrap_or(now)
}
