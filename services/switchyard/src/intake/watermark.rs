//! Per-partition offset bookkeeping for at-least-once consumption with many jobs in flight.
//!
//! A message's offset may be committed only when it and every earlier message of its partition
//! are finished (their output acknowledged). [`Watermarks`] keeps, per partition, the offsets
//! in flight and the highest offset seen, and answers "what may be stored now" as a contiguous
//! watermark. A partition is whatever key the consumer gives it (`i32`, or topic and
//! partition for a stage reading several topics). It also decides when a partition must pause (its own cap or the stage's cap is
//! reached) and when paused partitions may resume. Plain data, no I/O: the consumer loop acts on
//! what it returns.

use std::collections::{BTreeMap, BTreeSet};

/// Caps on work in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Across all partitions.
    pub total: usize,
    /// Within one partition.
    pub per_partition: usize,
}

#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    in_flight: BTreeSet<i64>,
    lowest_seen: Option<i64>,
    highest_seen: Option<i64>,
    stored: Option<i64>,
    paused: bool,
}

impl Partition {
    /// The last offset such that it and all before it are done.
    fn watermark(&self) -> Option<i64> {
        match self.in_flight.first() {
            Some(first) => Some(first - 1).filter(|w| self.lowest_seen.is_some_and(|l| *w >= l)),
            None => self.highest_seen,
        }
    }
}

/// A ticket for one message in flight; hand it back to [`Watermarks::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket<P = i32> {
    /// Partition.
    pub partition: P,
    /// Offset.
    pub offset: i64,
    generation: u64,
}

/// What the consumer must do after a start or finish.
#[derive(Debug, PartialEq, Eq)]
pub struct Actions<P = i32> {
    /// Store this offset (the last finished one of a contiguous run) for the partition.
    pub store: Option<(P, i64)>,
    /// Pause these partitions.
    pub pause: Vec<P>,
    /// Resume these partitions.
    pub resume: Vec<P>,
}

impl<P> Default for Actions<P> {
    fn default() -> Self {
        Self {
            store: None,
            pause: Vec::new(),
            resume: Vec::new(),
        }
    }
}

/// The bookkeeping for one consumer's assigned partitions.
#[derive(Debug)]
pub struct Watermarks<P = i32> {
    caps: Caps,
    partitions: BTreeMap<P, Partition>,
    total: usize,
    next_generation: u64,
    /// Set by [`Watermarks::hold`]: every partition paused until in-flight work drops to the
    /// low mark of this cap.
    held: Option<usize>,
}

impl<P: Ord + Copy> Watermarks<P> {
    /// Empty bookkeeping with the given caps.
    pub fn new(caps: Caps) -> Self {
        Self {
            caps: Caps {
                total: caps.total.max(1),
                per_partition: caps.per_partition.max(1),
            },
            partitions: BTreeMap::new(),
            total: 0,
            next_generation: 1,
            held: None,
        }
    }

    /// Jobs in flight across all partitions.
    pub fn in_flight(&self) -> usize {
        self.total
    }

    /// Jobs in flight in one partition.
    pub fn in_flight_in(&self, partition: P) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |p| p.in_flight.len())
    }

    /// A partition was assigned: start it afresh (a new generation, so late finishes from an
    /// earlier assignment are ignored).
    pub fn assign(&mut self, partition: P) {
        if let Some(old) = self.partitions.remove(&partition) {
            self.total -= old.in_flight.len();
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.partitions.insert(
            partition,
            Partition {
                generation,
                ..Partition::default()
            },
        );
    }

    /// A partition was revoked: forget it and return the offset to store for it, if any
    /// (the watermark not yet stored). Jobs still in flight for it are abandoned: their
    /// messages will be delivered again to whoever owns the partition next.
    pub fn revoke(&mut self, partition: P) -> Option<i64> {
        let p = self.partitions.remove(&partition)?;
        self.total -= p.in_flight.len();
        p.watermark().filter(|w| p.stored.is_none_or(|s| *w > s))
    }

    /// The watermark not yet stored for a partition, to store before a final commit.
    pub fn pending_store(&self, partition: P) -> Option<i64> {
        let p = self.partitions.get(&partition)?;
        p.watermark().filter(|w| p.stored.is_none_or(|s| *w > s))
    }

    /// Assigned partitions.
    pub fn partitions(&self) -> Vec<P> {
        self.partitions.keys().copied().collect()
    }

    /// A message arrived. Returns its ticket and the partitions to pause; `None` when the
    /// partition is not assigned here (the message belongs to an old assignment: skip it).
    pub fn start(&mut self, partition: P, offset: i64) -> Option<(Ticket<P>, Vec<P>)> {
        let p = self.partitions.get_mut(&partition)?;
        if !p.in_flight.insert(offset) {
            // Delivered twice while the first copy is still running: skip the copy.
            return None;
        }
        p.lowest_seen = Some(p.lowest_seen.map_or(offset, |l| l.min(offset)));
        p.highest_seen = Some(p.highest_seen.map_or(offset, |h| h.max(offset)));
        let ticket = Ticket {
            partition,
            offset,
            generation: p.generation,
        };
        self.total += 1;
        Some((ticket, self.pause_due()))
    }

    /// A message's output was acknowledged. Returns what to store, pause and resume.
    pub fn finish(&mut self, ticket: Ticket<P>) -> Actions<P> {
        let mut actions = Actions::default();
        let Some(p) = self.partitions.get_mut(&ticket.partition) else {
            return actions;
        };
        if p.generation != ticket.generation || !p.in_flight.remove(&ticket.offset) {
            return actions;
        }
        self.total -= 1;
        if let Some(w) = p.watermark()
            && p.stored.is_none_or(|s| w > s)
        {
            p.stored = Some(w);
            actions.store = Some((ticket.partition, w));
        }
        actions.resume = self.resume_due();
        actions
    }

    /// Partitions that are paused but may run again (after a revoke freed capacity).
    pub fn resumable(&mut self) -> Vec<P> {
        self.resume_due()
    }

    /// Pauses every partition until in-flight work drops to the low mark of `cap`; returns the
    /// partitions to pause. For a stage that has been at its cap for long: its consumer can
    /// then keep polling (serving rebalances) without taking more work.
    pub fn hold(&mut self, cap: usize) -> Vec<P> {
        self.held = Some(cap.max(1));
        let mut out = Vec::new();
        for (id, p) in self.partitions.iter_mut() {
            if !p.paused {
                p.paused = true;
                out.push(*id);
            }
        }
        out
    }

    /// Whether [`Watermarks::hold`] is in force.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Forgets every partition (at close), so nothing waits on abandoned jobs.
    pub fn clear(&mut self) {
        self.partitions.clear();
        self.total = 0;
        self.held = None;
    }

    /// Records that the consumer stored `offset` itself (e.g. before a final commit).
    pub fn mark_stored(&mut self, partition: P, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.stored = Some(p.stored.map_or(offset, |s| s.max(offset)));
        }
    }

    fn pause_due(&mut self) -> Vec<P> {
        let over_total = self.total >= self.caps.total;
        let cap = self.caps.per_partition;
        let mut out = Vec::new();
        for (id, p) in self.partitions.iter_mut() {
            if !p.paused && (over_total || p.in_flight.len() >= cap) {
                p.paused = true;
                out.push(*id);
            }
        }
        out
    }

    /// Paused partitions resume only once an eighth of a cap is free again: librdkafka drops a
    /// partition's prefetched messages when it pauses, so resuming at the first free slot
    /// would pause, drop and re-fetch once per finished job.
    fn resume_due(&mut self) -> Vec<P> {
        let low = |cap: usize| cap - (cap / 8).max(1);
        if self.total > low(self.caps.total) {
            return Vec::new();
        }
        match self.held {
            Some(cap) if self.total > low(cap) => return Vec::new(),
            Some(_) => self.held = None,
            None => {}
        }
        let per_partition = low(self.caps.per_partition);
        let mut out = Vec::new();
        for (id, p) in self.partitions.iter_mut() {
            if p.paused && p.in_flight.len() <= per_partition {
                p.paused = false;
                out.push(*id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wm(total: usize, per: usize) -> Watermarks {
        let mut w = Watermarks::new(Caps {
            total,
            per_partition: per,
        });
        w.assign(0);
        w.assign(1);
        w
    }

    #[test]
    fn watermark_advances_only_over_contiguous_finished_offsets() {
        let mut w = wm(100, 100);
        let t: Vec<Ticket> = (10..15).map(|o| w.start(0, o).unwrap().0).collect();
        // Finish 12 and 13 first: nothing may be stored, 10 and 11 are still running.
        assert_eq!(w.finish(t[2]).store, None);
        assert_eq!(w.finish(t[3]).store, None);
        // 10 done: store 10 only.
        assert_eq!(w.finish(t[0]).store, Some((0, 10)));
        // 11 done: 11, 12, 13 are now contiguous.
        assert_eq!(w.finish(t[1]).store, Some((0, 13)));
        assert_eq!(w.finish(t[4]).store, Some((0, 14)));
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut w = wm(100, 100);
        let a = w.start(0, 5).unwrap().0;
        let b = w.start(1, 7).unwrap().0;
        assert_eq!(w.finish(b).store, Some((1, 7)));
        assert_eq!(w.finish(a).store, Some((0, 5)));
    }

    #[test]
    fn per_partition_cap_pauses_and_resumes_that_partition() {
        let mut w = wm(100, 2);
        let (a, pause) = w.start(0, 0).unwrap();
        assert!(pause.is_empty());
        let (_b, pause) = w.start(0, 1).unwrap();
        assert_eq!(pause, vec![0]);
        let actions = w.finish(a);
        assert_eq!(actions.resume, vec![0]);
    }

    #[test]
    fn total_cap_pauses_everything() {
        let mut w = wm(2, 10);
        w.start(0, 0).unwrap();
        let (t, pause) = w.start(1, 0).unwrap();
        assert_eq!(pause, vec![0, 1]);
        assert_eq!(w.finish(t).resume, vec![0, 1]);
    }

    #[test]
    fn paused_partitions_resume_once_an_eighth_of_the_cap_is_free() {
        let mut w = wm(16, 100);
        let tickets: Vec<Ticket> = (0..16).map(|o| w.start(0, o).unwrap().0).collect();
        assert_eq!(w.in_flight(), 16);
        // One slot free: still paused (resuming now would thrash).
        assert!(w.finish(tickets[0]).resume.is_empty());
        // Two free (16 - 16/8 = 14 in flight): resume.
        assert_eq!(w.finish(tickets[1]).resume, vec![0, 1]);
    }

    #[test]
    fn a_hold_pauses_everything_until_the_low_mark() {
        let mut w = wm(usize::MAX, 100);
        let tickets: Vec<Ticket> = (0..16).map(|o| w.start(1, o).unwrap().0).collect();
        assert_eq!(w.hold(16), vec![0, 1]);
        assert!(w.is_held());
        assert!(w.finish(tickets[0]).resume.is_empty());
        assert_eq!(w.finish(tickets[1]).resume, vec![0, 1]);
        assert!(!w.is_held());
    }

    #[test]
    fn late_finish_from_an_old_assignment_is_ignored() {
        let mut w = wm(10, 10);
        let old = w.start(0, 3).unwrap().0;
        // Offset 3 never finished and nothing before it was seen here: nothing to store.
        assert_eq!(w.revoke(0), None);
        w.assign(0);
        let new = w.start(0, 3).unwrap().0;
        assert_eq!(w.finish(old), Actions::default());
        assert_eq!(w.in_flight(), 1);
        assert_eq!(w.finish(new).store, Some((0, 3)));
    }

    #[test]
    fn revoke_returns_the_unstored_watermark() {
        let mut w = wm(10, 10);
        let a = w.start(0, 0).unwrap().0;
        let _b = w.start(0, 1).unwrap().0;
        let c = w.start(0, 2).unwrap().0;
        w.finish(c);
        assert_eq!(w.pending_store(0), None);
        w.finish(a);
        // 0 was stored by finish; 1 still runs, so nothing new.
        assert_eq!(w.revoke(0), None);
        assert_eq!(w.in_flight(), 0);
        assert_eq!(w.start(0, 9), None, "revoked partitions take no work");
    }
}
