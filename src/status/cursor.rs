//! The opaque keyset cursor of `/v1/executions`: the (started_at, execution_id) of the last row
//! of a page, so the next page starts strictly after it whatever was inserted meanwhile.
//!
//! Encoding: base64url (no padding) of 1 version byte, started_at as big-endian i64
//! microseconds since the Unix epoch, then the 16 UUID bytes. Opaque to clients: they pass it back.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;
use uuid::Uuid;

/// A position in the (started_at DESC, execution_id DESC) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub started_at: OffsetDateTime,
    pub execution_id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let micros = i64::try_from(self.started_at.unix_timestamp_nanos() / 1_000)
            // Out of i64 microseconds is ~292,000 years away; PostgreSQL cannot store it anyway.
            .unwrap_or(i64::MAX);
        let mut bytes = Vec::with_capacity(LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&micros.to_be_bytes());
        bytes.extend_from_slice(self.execution_id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a cursor given back by a client; `None` for anything this code did not make.
    pub fn parse(text: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        if bytes.len() != LEN || bytes[0] != VERSION {
            return None;
        }
        let micros = i64::from_be_bytes(bytes[1..9].try_into().ok()?);
        let started_at =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()?;
        let execution_id = Uuid::from_slice(&bytes[9..]).ok()?;
        Some(Cursor {
            started_at,
            execution_id,
        })
    }
}

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_to_the_microsecond() {
        let cursor = Cursor {
            started_at: time::macros::datetime!(2026-11-24 14:54:15.123456 UTC),
            execution_id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::parse(&cursor.encode()), Some(cursor));
    }

    #[test]
    fn foreign_or_truncated_cursor_is_refused() {
        let good = Cursor {
            started_at: OffsetDateTime::UNIX_EPOCH,
            execution_id: Uuid::nil(),
        }
        .encode();
        assert!(Cursor::parse(&good[..good.len() - 2]).is_none());
        assert!(Cursor::parse("not base64!").is_none());
        assert!(Cursor::parse("").is_none());
        let mut other_version = URL_SAFE_NO_PAD.decode(&good).unwrap();
        other_version[0] = 2;
        assert!(Cursor::parse(&URL_SAFE_NO_PAD.encode(other_version)).is_none());
    }
}
