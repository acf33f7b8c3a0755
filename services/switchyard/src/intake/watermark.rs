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
    /// What the last owner had finished past its committed offset (from the commit's metadata):
    /// messages it covers are skipped, not redone.
    resume: Option<Resume>,
}

/// Offsets finished past a committed offset, as the commit's metadata records them: every
/// offset from `from` to `highest` except those in `pending` was finished.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resume {
    /// The committed offset (the first not known to be finished).
    pub from: i64,
    /// The highest offset the last owner had taken.
    pub highest: i64,
    /// Offsets in `from..=highest` that were not finished.
    pub pending: BTreeSet<i64>,
}

/// The longest metadata written with a commit (brokers accept 4096 bytes by default); a
/// record that would be longer is left out and the plain watermark is committed.
pub const MAX_METADATA: usize = 3000;

const METADATA_PREFIX: &str = "sy1:";

impl Resume {
    /// Whether `offset` was finished by the last owner.
    pub fn finished(&self, offset: i64) -> bool {
        offset >= self.from && offset <= self.highest && !self.pending.contains(&offset)
    }

    /// The metadata text: `sy1:<highest-from>:<pending ranges relative to from>`, e.g.
    /// `sy1:40:0,3-5` (offsets from+1, from+2, from+6..from+40 finished). `None` when it would
    /// be longer than [`MAX_METADATA`].
    pub fn encode(&self) -> Option<String> {
        use std::fmt::Write;
        let mut out = format!("{METADATA_PREFIX}{}:", self.highest - self.from);
        let mut iter = self.pending.iter().map(|o| o - self.from).peekable();
        let mut first = true;
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end += 1;
                iter.next();
            }
            if !first {
                out.push(',');
            }
            first = false;
            let _ = if start == end {
                write!(out, "{start}")
            } else {
                write!(out, "{start}-{end}")
            };
            if out.len() > MAX_METADATA {
                return None;
            }
        }
        Some(out)
    }

    /// Reads what [`Resume::encode`] wrote, for a commit at `from`; anything else (another
    /// tool's metadata, a damaged text) is `None`: the plain offset then counts.
    pub fn decode(from: i64, text: &str) -> Option<Resume> {
        let rest = text.strip_prefix(METADATA_PREFIX)?;
        let (span, ranges) = rest.split_once(':')?;
        let span: i64 = span.parse().ok().filter(|s| (0..=10_000_000).contains(s))?;
        let mut pending = BTreeSet::new();
        for r in ranges.split(',').filter(|r| !r.is_empty()) {
            let (a, b) = match r.split_once('-') {
                Some((a, b)) => (a.parse::<i64>().ok()?, b.parse::<i64>().ok()?),
                None => {
                    let a = r.parse::<i64>().ok()?;
                    (a, a)
                }
            };
            if a < 0 || b < a || b > span {
                return None;
            }
            pending.extend((a..=b).map(|o| from + o));
        }
        Some(Resume {
            from,
            highest: from + span,
            pending,
        })
    }
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

    /// A partition was assigned with what its last owner had finished past the committed
    /// offset (the commit's metadata), whose messages will be skipped.
    pub fn assign_resuming(&mut self, partition: P, resume: Option<Resume>) {
        self.assign(partition);
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.resume = resume.filter(|r| r.highest >= r.from);
        }
    }

    /// Whether the message at `offset` was already finished by the partition's last owner
    /// (its commit's metadata says so). Such a message is recorded as taken and finished:
    /// the caller skips it.
    pub fn already_finished(&mut self, partition: P, offset: i64) -> bool {
        let Some(p) = self.partitions.get_mut(&partition) else {
            return false;
        };
        let done = p.resume.as_ref().is_some_and(|r| r.finished(offset));
        if done && !p.in_flight.contains(&offset) {
            p.lowest_seen = Some(p.lowest_seen.map_or(offset, |l| l.min(offset)));
            p.highest_seen = Some(p.highest_seen.map_or(offset, |h| h.max(offset)));
        }
        if p.resume.as_ref().is_some_and(|r| offset >= r.highest) {
            p.resume = None;
        }
        done
    }

    /// What to commit for a partition: the next offset to read (the watermark + 1) and the
    /// metadata recording the offsets finished beyond it (empty when none are, or when the
    /// record would be too long). `None` before anything was taken.
    pub fn commit_point(&self, partition: P) -> Option<(i64, String)> {
        let p = self.partitions.get(&partition)?;
        let next = match p.watermark() {
            Some(w) => w + 1,
            None => p.lowest_seen?,
        };
        let seen = p.highest_seen?;
        let mut pending: BTreeSet<i64> = p.in_flight.range(next..).copied().collect();
        let mut highest = seen;
        // What the last owner finished and this one has not reached yet stays recorded.
        if let Some(r) = &p.resume
            && r.highest > seen
        {
            highest = r.highest;
            pending.extend(r.pending.range(seen + 1..));
        }
        let finished_beyond = highest >= next && (highest - next + 1) as usize > pending.len();
        let metadata = if finished_beyond {
            Resume {
                from: next,
                highest,
                pending,
            }
            .encode()
            .unwrap_or_default()
        } else {
            String::new()
        };
        Some((next, metadata))
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
    fn finished_offsets_past_the_watermark_round_trip_through_the_metadata() {
        let mut w = wm(100, 100);
        let t: Vec<Ticket> = (10..20).map(|o| w.start(0, o).unwrap().0).collect();
        // 10 and 14 still run; everything else is done.
        for (i, ticket) in t.iter().enumerate() {
            if i != 0 && i != 4 {
                w.finish(*ticket);
            }
        }
        let (next, meta) = w.commit_point(0).unwrap();
        assert_eq!(next, 10, "nothing is contiguous past 9");
        let r = Resume::decode(next, &meta).unwrap();
        assert_eq!(r.highest, 19);
        assert_eq!(r.pending, [10, 14].into());
        // The next owner skips what was finished and redoes only 10 and 14.
        let mut next_owner = wm(100, 100);
        next_owner.assign_resuming(0, Some(r));
        let redone: Vec<i64> = (10..25)
            .filter(|o| !next_owner.already_finished(0, *o))
            .collect();
        assert_eq!(redone, [10, 14, 20, 21, 22, 23, 24]);
        // The next owner, before it reaches 20, still records what the last one finished.
        let mut resumed = wm(100, 100);
        resumed.assign_resuming(0, Resume::decode(next, &meta));
        let ten = resumed.start(0, 10).unwrap().0;
        let (at, meta2) = resumed.commit_point(0).unwrap();
        assert_eq!(at, 10);
        let r2 = Resume::decode(at, &meta2).unwrap();
        assert_eq!((r2.highest, r2.pending.clone()), (19, [10, 14].into()));
        resumed.finish(ten);
        assert!(resumed.already_finished(0, 11));
        let (at, _) = resumed.commit_point(0).unwrap();
        assert_eq!(at, 12);
        // Nothing beyond the watermark: no metadata.
        let mut plain = wm(100, 100);
        let a = plain.start(0, 3).unwrap().0;
        plain.finish(a);
        assert_eq!(plain.commit_point(0), Some((4, String::new())));
    }

    #[test]
    fn metadata_is_compact_bounded_and_refuses_what_it_did_not_write() {
        let r = Resume {
            from: 1000,
            highest: 1040,
            pending: [1000, 1003, 1004, 1005].into(),
        };
        let text = r.encode().unwrap();
        assert_eq!(text, "sy1:40:0,3-5");
        assert_eq!(Resume::decode(1000, &text), Some(r));
        for bad in ["", "other", "sy1:x:0", "sy1:5:7", "sy1:5:3-1", "sy1:-1:"] {
            assert_eq!(Resume::decode(0, bad), None, "{bad}");
        }
        // Thousands of scattered pending offsets do not fit: the plain watermark is committed.
        let scattered = Resume {
            from: 0,
            highest: 100_000,
            pending: (0..100_000).step_by(2).collect(),
        };
        assert_eq!(scattered.encode(), None);
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
