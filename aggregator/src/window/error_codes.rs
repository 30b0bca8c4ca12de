//! The bound on distinct error codes: which name an error code is counted under.

use qoe_schemas::errors::{stored_code, CODES_PER_HOUR, OTHER_CODE};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The distinct error codes a partition has named per hour of event time: the first
/// [`CODES_PER_HOUR`] keep their name, later ones are [`OTHER_CODE`]. Part of the state
/// snapshot, so a restart names codes as an uninterrupted run does; an hour is forgotten once
/// the watermark has passed it (its windows are final).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ErrorCodeNames {
    hours: BTreeMap<i64, BTreeSet<String>>,
}

const HOUR_MS: i64 = 3_600_000;

impl ErrorCodeNames {
    /// The name `code` is counted under in the hour of `event_time`.
    pub(super) fn name(&mut self, event_time: i64, code: &str) -> Box<str> {
        let code = stored_code(code);
        let named = self
            .hours
            .entry(event_time.div_euclid(HOUR_MS))
            .or_default();
        if named.contains(code) {
            return code.into();
        }
        if named.len() < CODES_PER_HOUR {
            named.insert(code.to_owned());
            return code.into();
        }
        OTHER_CODE.into()
    }

    /// Forgets the hours whose windows are all final at `watermark`.
    pub(super) fn expire(&mut self, watermark: i64) {
        while let Some((&hour, _)) = self.hours.first_key_value() {
            if (hour + 1) * HOUR_MS > watermark {
                break;
            }
            self.hours.remove(&hour);
        }
    }
}
