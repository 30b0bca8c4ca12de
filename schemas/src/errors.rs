//! Error codes as the pipeline counts them: which codes are *business* errors, and the bound
//! on how many distinct codes are stored.
//!
//! A business error (entitlement, geo-block, concurrent-stream limit, ...) is the service
//! refusing a viewer on purpose, not the video failing: it is counted apart (the
//! `qoe_error_codes_*` tables carry `business = 1`) and left out of start and playback
//! failures (`vsf`, `vpf`) and so out of the experience score. Which codes are business is
//! configuration ([`BusinessCodes`]), matched without regard to case or surrounding spaces.
//!
//! Codes come from players and from the open internet, so the distinct codes stored are
//! bounded: per Kafka partition and hour of event time, the first [`CODES_PER_HOUR`] distinct
//! codes keep their name and any later one is counted as [`OTHER_CODE`]. Which codes those are
//! depends only on the partition's messages, so a replay or a restart names them the same way.

use std::collections::BTreeSet;
use thiserror::Error;

/// Distinct error codes named per partition and hour of event time; later ones are `other`.
pub const CODES_PER_HOUR: usize = 100;

/// The name under which codes beyond [`CODES_PER_HOUR`] are counted.
pub const OTHER_CODE: &str = "other";

/// Longest code stored; longer ones are cut (at a character boundary).
pub const MAX_STORED_CODE_LEN: usize = 64;

/// The code as stored: trimmed and at most [`MAX_STORED_CODE_LEN`] bytes.
pub fn stored_code(code: &str) -> &str {
    let code = code.trim();
    if code.len() <= MAX_STORED_CODE_LEN {
        return code;
    }
    let mut end = MAX_STORED_CODE_LEN;
    while !code.is_char_boundary(end) {
        end -= 1;
    }
    &code[..end]
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusinessCodesError {
    #[error("business error code {0:?} is empty or longer than {MAX_STORED_CODE_LEN} characters")]
    BadCode(String),
    #[error("more than {0} business error codes")]
    TooMany(usize),
}

/// The error codes configured as business errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusinessCodes {
    codes: BTreeSet<String>,
}

impl BusinessCodes {
    /// At most this many codes can be configured.
    pub const MAX: usize = 1_000;

    /// Codes separated by commas or new lines (a file's lines); `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, BusinessCodesError> {
        let mut codes = BTreeSet::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            for code in line.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if code.len() > MAX_STORED_CODE_LEN {
                    return Err(BusinessCodesError::BadCode(code.to_owned()));
                }
                codes.insert(code.to_lowercase());
                if codes.len() > Self::MAX {
                    return Err(BusinessCodesError::TooMany(Self::MAX));
                }
            }
        }
        Ok(BusinessCodes { codes })
    }

    /// Adds the codes of `other`.
    pub fn extend(&mut self, other: BusinessCodes) {
        self.codes.extend(other.codes);
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether `code` is a business error.
    pub fn contains(&self, code: Option<&str>) -> bool {
        match code {
            Some(c) if !self.codes.is_empty() => {
                let c = stored_code(c);
                // Codes are short; the common case is already lower-case.
                if c.bytes().any(|b| b.is_ascii_uppercase()) || !c.is_ascii() {
                    self.codes.contains(&c.to_lowercase())
                } else {
                    self.codes.contains(c)
                }
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_codes_match_whatever_the_case_and_spaces() {
        let b =
            BusinessCodes::parse("GEO_BLOCKED, entitlement\n# comment\n6001 # Shaka\n").unwrap();
        assert_eq!(b.len(), 3);
        assert!(b.contains(Some("geo_blocked")));
        assert!(b.contains(Some(" Entitlement ")));
        assert!(b.contains(Some("6001")));
        assert!(!b.contains(Some("6002")));
        assert!(!b.contains(None));
        assert!(!BusinessCodes::default().contains(Some("x")));
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(matches!(
            BusinessCodes::parse(&"x".repeat(65)),
            Err(BusinessCodesError::BadCode(_))
        ));
        let many: Vec<String> = (0..=BusinessCodes::MAX).map(|i| i.to_string()).collect();
        assert_eq!(
            BusinessCodes::parse(&many.join(",")),
            Err(BusinessCodesError::TooMany(BusinessCodes::MAX))
        );
    }

    #[test]
    fn stored_codes_are_trimmed_and_cut_at_a_character() {
        assert_eq!(stored_code("  E42 "), "E42");
        let long = format!("{}é", "x".repeat(63));
        assert_eq!(stored_code(&long), "x".repeat(63));
    }
}
