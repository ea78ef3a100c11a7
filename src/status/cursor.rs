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

    /// Decodes a cursor given back by a client; `None` for anything not of this shape (what
    /// [`PATTERN`] describes). Any position of that shape is accepted: a cursor is a place in
    /// the order, not an authority, so one a client made up just starts a page there. A time
    /// beyond what a timestamp can hold is taken as the nearest one that can.
    pub fn parse(text: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        if bytes.len() != LEN || bytes[0] != VERSION {
            return None;
        }
        // Clamped to what PostgreSQL can compare (it refuses an earlier timestamp outright) and
        // what a timestamp here can hold.
        let micros = i64::from_be_bytes(bytes[1..9].try_into().ok()?).max(POSTGRES_MIN_MICROS);
        let started_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
            .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc());
        let execution_id = Uuid::from_slice(&bytes[9..]).ok()?;
        Some(Cursor {
            started_at,
            execution_id,
        })
    }
}

/// Every cursor [`Cursor::encode`] makes and [`Cursor::parse`] takes, as the OpenAPI document
/// states it: base64url of 25 bytes (34 characters, the last carrying 4 zero bits) whose first
/// byte is the version, 1.
pub const PATTERN: &str = "^A[Q-Za-f][A-Za-z0-9_-]{31}[AQgw]$";
const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 16;
/// The earliest `timestamptz` PostgreSQL stores, 4713-11-24 BC 00:00 UTC, in Unix microseconds.
const POSTGRES_MIN_MICROS: i64 = -210_866_803_200_000_000;

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
    fn every_encoded_cursor_matches_the_documented_pattern_and_any_such_text_parses() {
        let shape = |text: &str| {
            let bytes = text.as_bytes();
            text.len() == 34
                && bytes[0] == b'A'
                && matches!(bytes[1], b'Q'..=b'Z' | b'a'..=b'f')
                && bytes[2..33]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
                && matches!(bytes[33], b'A' | b'Q' | b'g' | b'w')
        };
        assert_eq!(PATTERN, "^A[Q-Za-f][A-Za-z0-9_-]{31}[AQgw]$");
        for micros in [i64::MIN, -1, 0, 1_700_000_000_000_000, i64::MAX] {
            let mut bytes = vec![VERSION];
            bytes.extend_from_slice(&micros.to_be_bytes());
            bytes.extend_from_slice(Uuid::new_v4().as_bytes());
            let text = URL_SAFE_NO_PAD.encode(&bytes);
            assert!(shape(&text), "{text}");
            assert!(Cursor::parse(&text).is_some(), "{text}");
        }
        for text in [
            "AQ_________________________________",
            "Af-------------------------------w",
            "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            if shape(text) {
                assert!(Cursor::parse(text).is_some(), "{text}");
            }
        }
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
