//! The model's error type: every refusal says which field and value were at fault.

/// Why a change was refused. The admin API maps these to 400, 404 and 409.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A field has a value that is not allowed (400).
    #[error("invalid value {value:?} for {field}: {reason}")]
    Invalid { field: String, value: String, reason: String },
    /// A request body or a file's entry cannot be read as what it should be (400).
    #[error("{field}: {reason}")]
    Unreadable { field: String, reason: String },
    /// A referenced resource does not exist (404 when it is the resource addressed, 400 otherwise).
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// The change contradicts the current state (409).
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The longest part of an invalid value an error quotes, bytes.
pub const MAX_QUOTED_BYTES: usize = 200;

fn shortened(mut value: String) -> String {
    if value.len() <= MAX_QUOTED_BYTES {
        return value;
    }
    let len = value.len();
    let mut end = MAX_QUOTED_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value.truncate(end);
    value.push_str(&format!("… ({len} bytes)"));
    value
}

impl Error {
    /// A refused value; a value longer than [`MAX_QUOTED_BYTES`] is kept only in part (with its length),
    /// so an error never echoes a huge input back.
    pub fn invalid(field: impl Into<String>, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            value: shortened(value.into()),
            reason: reason.into(),
        }
    }

    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound { kind, name: name.into() }
    }

    /// The same error, saying which step of a larger change it came from.
    pub fn context(self, what: &str) -> Self {
        match self {
            Error::Invalid { field, value, reason } => Error::Invalid {
                field,
                value,
                reason: format!("{reason} (while applying \"{what}\"; nothing was changed)"),
            },
            Error::NotFound { kind, name } => Error::invalid(
                kind,
                name,
                format!("no such {kind} (while applying \"{what}\"; nothing was changed)"),
            ),
            Error::Conflict(m) => Error::Conflict(format!("{m} (while applying \"{what}\"; nothing was changed)")),
            Error::Unreadable { field, reason } => Error::Unreadable {
                field,
                reason: format!("{reason} (while applying \"{what}\"; nothing was changed)"),
            },
        }
    }

    /// A reference inside a request body to something that does not exist is the client's mistake in a
    /// field (400), not a missing addressed resource (404).
    pub fn into_field_error(self, field: &str) -> Self {
        match self {
            Error::NotFound { kind, name } => Error::invalid(field, name, format!("no such {kind}")),
            other => other,
        }
    }
}
