//! Reading rendered step parameters. The registry checked their types at load, but rendering
//! happens later, so each action reads them again here and refuses anything unexpected with a
//! permanent error that names the parameter.

use std::path::PathBuf;

use reqwest::Url;
use serde_json::Value;

use super::ActionError;

pub fn required<'a>(params: &'a Value, name: &str) -> Result<&'a Value, ActionError> {
    optional(params, name)?
        .ok_or_else(|| ActionError::Permanent(format!("parameter `{name}` is required")))
}

/// `Ok(None)` when absent or `null`; an error when `params` is not an object.
pub fn optional<'a>(params: &'a Value, name: &str) -> Result<Option<&'a Value>, ActionError> {
    let object = params
        .as_object()
        .ok_or_else(|| ActionError::Permanent("parameters must be a mapping".into()))?;
    Ok(object.get(name).filter(|value| !value.is_null()))
}

pub fn string<'a>(params: &'a Value, name: &str) -> Result<&'a str, ActionError> {
    as_str(required(params, name)?, name)
}

pub fn optional_string<'a>(params: &'a Value, name: &str) -> Result<Option<&'a str>, ActionError> {
    optional(params, name)?
        .map(|value| as_str(value, name))
        .transpose()
}

pub fn absolute_path(params: &Value, name: &str) -> Result<PathBuf, ActionError> {
    let text = string(params, name)?;
    let path = PathBuf::from(text);
    if !path.is_absolute() || text.contains('\0') {
        return Err(ActionError::Permanent(format!(
            "parameter `{name}` must be an absolute path"
        )));
    }
    Ok(path)
}

/// An integer, also accepted as a string of digits (a rendered template yields a string).
pub fn optional_u64(params: &Value, name: &str) -> Result<Option<u64>, ActionError> {
    let Some(value) = optional(params, name)? else {
        return Ok(None);
    };
    let parsed = match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse().ok()
        }
        _ => None,
    };
    parsed.map(Some).ok_or_else(|| {
        ActionError::Permanent(format!("parameter `{name}` must be a non-negative integer"))
    })
}

pub fn u64(params: &Value, name: &str) -> Result<u64, ActionError> {
    optional_u64(params, name)?
        .ok_or_else(|| ActionError::Permanent(format!("parameter `{name}` is required")))
}

/// A list of strings; each element stays one element.
pub fn optional_string_list(params: &Value, name: &str) -> Result<Vec<String>, ActionError> {
    let Some(value) = optional(params, name)? else {
        return Ok(Vec::new());
    };
    let not_a_list =
        || ActionError::Permanent(format!("parameter `{name}` must be a list of strings"));
    value
        .as_array()
        .ok_or_else(not_a_list)?
        .iter()
        .map(|item| item.as_str().map(str::to_owned).ok_or_else(not_a_list))
        .collect()
}

fn as_str<'a>(value: &'a Value, name: &str) -> Result<&'a str, ActionError> {
    value
        .as_str()
        .ok_or_else(|| ActionError::Permanent(format!("parameter `{name}` must be a string")))
}

/// Why a text is not a URL a step may send a request to. The messages never repeat the URL
/// (a rendered one may carry decision data in its query); callers say which text it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("contains whitespace or a control character")]
    Whitespace,
    #[error("is not a URL ({0})")]
    Syntax(String),
    #[error("must be an http:// or https:// URL")]
    Scheme,
    #[error("has no host")]
    NoHost,
    #[error("must not carry credentials (use `secret`)")]
    Credentials,
}

/// The one URL rule, for literal URLs at load and rendered ones at run time: parsed by the
/// same parser the request uses, http or https, a host, no credentials (they would end up in
/// logs and the audit trail). Whitespace and control characters are refused before parsing,
/// because the parser would silently drop tabs and newlines and so change the destination.
pub fn http_url(text: &str) -> Result<Url, UrlError> {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlError::Whitespace);
    }
    let url = Url::parse(text).map_err(|error| UrlError::Syntax(error.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme);
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    Ok(url)
}
