//! How the status API writes the query layer's typed rows ([`super::queries`]) as JSON: the
//! functions the rows name in `#[serde(serialize_with = …)]`. The console reads the same rows
//! and formats them itself.
//!
//! Free text a person or an action wrote (end reasons, errors, vote reasons) is bounded to
//! [`TEXT_LIMIT`] bytes on the way out; JSON was bounded by the query layer.

use std::fmt::Display;

use serde::Serializer;
use time::OffsetDateTime;

use crate::status::cursor::Cursor;
use crate::store::audit::format_timestamp;

/// A stored state or verdict in its stored spelling.
pub fn text<T: Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// A SHA-256 as lowercase hex.
pub fn hex<S: Serializer>(bytes: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(bytes))
}

pub fn hex_opt<S: Serializer>(bytes: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(bytes) => serializer.serialize_some(&hex::encode(bytes)),
        None => serializer.serialize_none(),
    }
}

/// Free text, bounded to `TEXT_LIMIT` bytes.
pub fn bounded<S: Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&bounded_text(text))
}

pub fn bounded_opt<S: Serializer>(text: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match text {
        Some(text) => serializer.serialize_some(&bounded_text(text)),
        None => serializer.serialize_none(),
    }
}

/// RFC 3339 UTC with six fractional digits (as stored).
pub fn timestamp<S: Serializer>(at: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_timestamp(*at))
}

pub fn timestamp_opt<S: Serializer>(
    at: &Option<OffsetDateTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serializer.serialize_some(&format_timestamp(*at)),
        None => serializer.serialize_none(),
    }
}

/// A page position as the opaque `next_cursor` text.
pub fn cursor<S: Serializer>(cursor: &Option<Cursor>, serializer: S) -> Result<S::Ok, S::Error> {
    match cursor {
        Some(cursor) => serializer.serialize_some(&cursor.encode()),
        None => serializer.serialize_none(),
    }
}

/// Largest error or reason text returned as is (bytes).
pub const TEXT_LIMIT: usize = 2048;

pub(crate) fn bounded_text(text: &str) -> String {
    if text.len() <= TEXT_LIMIT {
        return text.to_owned();
    }
    format!("{}… ({} bytes)", truncate(text, TEXT_LIMIT), text.len())
}

pub(crate) fn truncate(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
