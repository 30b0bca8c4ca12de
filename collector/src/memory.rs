//! The allocator's settings: mimalloc (the global allocator, and librdkafka's `malloc` through
//! the `override` feature) returns freed memory to the operating system at once.
//!
//! By default mimalloc (v3, the version libmimalloc-sys builds) purges freed pages a second
//! after they empty. Under steady load memory is freed and taken again well within that
//! delay, so the process keeps it:
//! at 100k events/s the collector peaked at 49-53 MiB RSS, and at 40-41 MiB with immediate
//! purging, at the same CPU (`BENCHMARKS.md`, "Collector peak RSS at 100k events/s").

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// `mi_option_purge_delay` of `mimalloc.h` (the same position in mimalloc v2 and v3), which
/// libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: mi_option_t = 15;

/// Environment variable with which an operator chooses the delay instead (mimalloc's own).
const PURGE_DELAY_VARIABLE: &str = "MIMALLOC_PURGE_DELAY";

/// Purges freed memory immediately, unless `MIMALLOC_PURGE_DELAY` says otherwise.
pub fn release_freed_memory_promptly() {
    if std::env::var_os(PURGE_DELAY_VARIABLE).is_none() {
        // SAFETY: setting an option is a plain store in mimalloc's option table; any value is
        // valid for this option.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
    }
}

/// The purge delay in force, in milliseconds.
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: reading an option has no preconditions.
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_is_mimallocs_purge_delay() {
        // mimalloc v3's default purge delay is 1,000 ms (options.c): the constant names it.
        if std::env::var_os(PURGE_DELAY_VARIABLE).is_none() {
            assert_eq!(purge_delay_ms(), 1000);
            release_freed_memory_promptly();
            assert_eq!(purge_delay_ms(), 0);
        }
    }
}
