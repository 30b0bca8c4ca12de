//! CMCD and CDN log duplicate tracking: the reports and logged requests accepted in each open
//! window, by identity, with their sids (request ids) interned. A window's reports are forgotten once the watermark has passed it
//! (a copy arriving later is late, not a duplicate).

use hashbrown::HashSet;
use qoe_schemas::cmcd::CmcdMessage;
use std::collections::BTreeMap;
use std::hash::BuildHasher;

#[derive(Debug, Default)]
struct OpenWindow {
    first_offset: i64,
    /// CMCD reports accepted in this window, for deduplication.
    reports: Vec<ReportKey>,
}

/// A CMCD report's identity (players restart `sn` with a new source, so `ts` and `e` are in
/// it): the interned sid, `ts`, `sn` and the event type.
type ReportKey = (u32, i64, i64, Box<str>);

/// The sids of tracked CMCD reports, interned: duplicate tracking compares the ids
/// themselves, so no hash collision (crafted or accidental) can make one session's reports
/// pass for another's. An id is held while any of its reports is tracked; the hasher only
/// places ids in the table.
#[derive(Debug)]
struct Sids<S> {
    table: hashbrown::HashTable<u32>,
    /// Per slot: the id and how many tracked reports refer to it (0: free).
    slots: Vec<(Box<str>, u32)>,
    free: Vec<u32>,
    hasher: S,
}

impl<S: BuildHasher + Default> Default for Sids<S> {
    fn default() -> Self {
        Sids {
            table: hashbrown::HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hasher: S::default(),
        }
    }
}

impl<S: BuildHasher> Sids<S> {
    /// The slot of `id`, with one more reference.
    fn acquire(&mut self, id: &str) -> u32 {
        let hash = self.hasher.hash_one(id);
        let slots = &mut self.slots;
        if let Some(&i) = self.table.find(hash, |&i| &*slots[i as usize].0 == id) {
            slots[i as usize].1 += 1;
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                slots[i as usize] = (id.into(), 1);
                i
            }
            None => {
                slots.push((id.into(), 1));
                (slots.len() - 1) as u32
            }
        };
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, i, |&j| hasher.hash_one(&*slots[j as usize].0));
        i
    }

    /// Drops one reference; the id is forgotten with its last.
    fn release(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        slot.1 -= 1;
        if slot.1 > 0 {
            return;
        }
        let hash = self.hasher.hash_one(&*slot.0);
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        slot.0 = Box::default();
        self.free.push(i);
    }
}

/// The CMCD reports accepted per open window, for duplicate detection. `S` hashes sids.
#[derive(Debug)]
pub(super) struct ReportTracker<S> {
    open: BTreeMap<i64, OpenWindow>,
    sids: Sids<S>,
    seen: HashSet<ReportKey>,
}

impl<S: BuildHasher + Default> Default for ReportTracker<S> {
    fn default() -> Self {
        ReportTracker {
            open: BTreeMap::new(),
            sids: Sids::default(),
            seen: HashSet::new(),
        }
    }
}

impl<S: BuildHasher> ReportTracker<S> {
    /// Records the report at `offset` as accepted in `window`; false if it already was.
    pub(super) fn track(&mut self, offset: i64, window: i64, m: &CmcdMessage) -> bool {
        let r = &m.cmcd;
        self.track_key(offset, window, &r.sid, r.ts, r.sn.unwrap_or(-1), &r.e)
    }

    /// Records a CDN log request (its id and time) at `offset` as accepted in `window`; false
    /// if it already was. Its key has an empty event type, which no CMCD report has.
    pub(super) fn track_request(&mut self, offset: i64, window: i64, id: &str, time: i64) -> bool {
        self.track_key(offset, window, id, time, -1, "")
    }

    fn track_key(&mut self, offset: i64, window: i64, id: &str, ts: i64, sn: i64, e: &str) -> bool {
        let sid = self.sids.acquire(id);
        let key: ReportKey = (sid, ts, sn, e.into());
        if self.seen.contains(&key) {
            self.sids.release(sid);
            return false;
        }
        self.seen.insert(key.clone());
        self.open
            .entry(window)
            .or_insert_with(|| OpenWindow {
                first_offset: offset,
                reports: Vec::new(),
            })
            .reports
            .push(key);
        true
    }

    /// Forgets the reports of every window that ends at or before `watermark`.
    pub(super) fn close_until(&mut self, watermark: i64, window_ms: i64) {
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() + window_ms > watermark {
                break;
            }
            for k in entry.remove().reports {
                self.sids.release(k.0);
                self.seen.remove(&k);
            }
        }
    }

    /// The first offset of the oldest open window: a restart replays from there to rebuild
    /// this tracking.
    pub(super) fn first_offset(&self) -> Option<i64> {
        self.open.values().map(|w| w.first_offset).min()
    }

    /// Windows with tracked reports.
    pub(super) fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Reports tracked.
    pub(super) fn len(&self) -> usize {
        self.seen.len()
    }
}
