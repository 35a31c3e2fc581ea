//! Request input: JSON bodies and query strings, parsed with the field at fault named
//! (a JSON 400 like every other error). Unknown fields and keys are refused by the
//! request types themselves (`deny_unknown_fields`).

use serde::de::DeserializeOwned;

use super::ApiError;
use crate::validate::FieldError;

/// A 400 naming the field at `e`'s path, or `whole` when the error is not in one field.
fn located<E: std::fmt::Display>(whole: &str, e: serde_path_to_error::Error<E>) -> ApiError {
    let field = match e.path().to_string() {
        p if p == "." => whole.to_string(),
        p => p,
    };
    let message = e.inner().to_string();
    ApiError::invalid(vec![FieldError { field, message }])
}

/// Parses a query string (absent: empty).
pub(super) fn query<T: DeserializeOwned>(q: Option<String>) -> Result<T, ApiError> {
    let q = q.unwrap_or_default();
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| located("(query)", e))
}

/// Parses a JSON body: one value and nothing after it (whitespace aside), as
/// `serde_json::from_slice` insists.
pub(super) fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| located("(body)", e))?;
    de.end().map_err(|e| {
        ApiError::invalid(vec![FieldError {
            field: "(body)".into(),
            message: e.to_string(),
        }])
    })?;
    Ok(value)
}
