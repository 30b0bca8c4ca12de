//! Player simulator: viewers who behave like real player SDKs, incidents injected into one
//! slice, and the ground truth of what the collector acknowledged.
//!
//! Everything here is pure (no I/O, no wall clock) so a run is a function of its seed and
//! settings; [`delivery`] posts beacons over HTTP, and the `simulator` binary adds pacing and
//! output.
//!
//! - [`population`]: who watches what where: regions, CDNs, platforms, streams, and the
//!   network quality of each region x CDN slice.
//! - [`incident`]: a regression injected into one slice for a period (`--incident`).
//! - [`player`]: one view's state machine, from `view_start` to `view_end`, batching its
//!   events into beacons the way an SDK flushes them.
//! - [`simulation`]: the audience over simulated time: arrivals, departures, one tick at a time.
//! - [`offline`]: a run without a collector: every event counted once, per window and
//!   region x CDN, as `qoe_window_*` rows (the alert evaluation's input).
//! - [`native`]: native app viewers, whose requests reach the pipeline through their CDN's
//!   logs (CMCD v1 request mode), not beacons.
//! - [`beacon`]: the beacon protocol v1 request body for a batch of events.
//! - [`delivery`]: posting beacons to a collector, with retries; what was acknowledged.
//! - [`truth`]: expected per-window, per-slice metrics of the acknowledged events, by the
//!   spec's definitions.

pub mod beacon;
pub mod delivery;
pub mod incident;
pub mod native;
pub mod offline;
pub mod player;
pub mod population;
pub mod simulation;
pub mod truth;
