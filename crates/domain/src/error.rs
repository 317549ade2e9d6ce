//! Validation failures, named by field and rule so callers can report them
//! precisely.

use std::fmt;

/// The rule an input broke. Stable identifiers: clients may match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Rule {
    /// Empty, or only white space.
    Required,
    /// Longer than the maximum number of characters.
    TooLong,
    /// Holds a control character (newline, tab, NUL...) among visible ones.
    ControlCharacter,
    /// Not blank, but with no visible character: only format characters
    /// (zero-width space U+200B, BOM U+FEFF...), control characters and
    /// white space.
    Invisible,
    /// A number outside the allowed range.
    OutOfRange,
    /// Not in the expected format (e.g. not a 24-hex-digit id).
    Format,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Required => "required",
            Rule::TooLong => "tooLong",
            Rule::ControlCharacter => "controlCharacter",
            Rule::Invisible => "invisible",
            Rule::OutOfRange => "outOfRange",
            Rule::Format => "format",
        }
    }
}

/// One field that failed one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub rule: Rule,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: &'static str, rule: Rule, message: impl Into<String>) -> Self {
        Self {
            field,
            rule,
            message: message.into(),
        }
    }
}

/// Every field error of one input, so a client can fix them all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for e in &self.0 {
            if !first {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
            first = false;
        }
        Ok(())
    }
}
