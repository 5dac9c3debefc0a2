//! A bounded LRU of UDP/SCTP flows we sent out, so their return traffic passes the filter.
//!
//! Driven by [`super::Filter`]: outbound packets `insert` the reverse 5-tuple, inbound packets
//! `contains` it, and `expire` runs from the engine's timer. Tailscale keeps 512 flows in a pure
//! LRU (`wgengine/filter/filter.go`, `lruMax`); we also forget a flow once it has been idle for
//! [`FLOW_IDLE_TIMEOUT`], like a conntrack UDP entry, so a long-gone flow does not stay open
//! just because the table never filled up.
//!
//! The table is a fixed slab with an intrusive doubly-linked recency list plus a hash index for
//! lookups. After warm-up nothing allocates, and the hash map is never iterated (so eviction order
//! is deterministic).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How many flows are remembered (Tailscale's `lruMax`).
pub const MAX_FLOWS: usize = 512;

/// How long a flow stays open without traffic.
pub const FLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A flow as seen by an *inbound* packet: protocol, source, destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: u8,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Slot {
    key: FlowKey,
    last_seen: Instant,
    prev: usize,
    next: usize,
}

/// The LRU itself. Head is the most recently used flow.
#[derive(Debug)]
pub struct FlowTable {
    index: HashMap<FlowKey, usize>,
    slots: Vec<Slot>,
    head: usize,
    tail: usize,
    capacity: usize,
}

impl Default for FlowTable {
    fn default() -> Self {
        Self::with_capacity(MAX_FLOWS)
    }
}

impl FlowTable {
    /// A table holding at most `capacity` flows (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        FlowTable {
            index: HashMap::with_capacity(capacity),
            slots: Vec::with_capacity(capacity),
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    /// Number of remembered flows (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no flow is remembered.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Records or refreshes a flow, evicting the least recently used one when full.
    pub fn insert(&mut self, key: FlowKey, now: Instant) {
        if let Some(&i) = self.index.get(&key) {
            self.touch(i, now);
            return;
        }
        let i = if self.slots.len() < self.capacity {
            self.slots.push(Slot {
                key,
                last_seen: now,
                prev: NIL,
                next: NIL,
            });
            self.slots.len() - 1
        } else {
            // Reuse the least recently used slot.
            let i = self.tail;
            let Some(old) = self.slots.get(i).map(|s| s.key) else {
                return;
            };
            self.index.remove(&old);
            self.unlink(i);
            if let Some(s) = self.slots.get_mut(i) {
                s.key = key;
                s.last_seen = now;
            }
            i
        };
        self.index.insert(key, i);
        self.push_front(i);
    }

    /// Whether `key` is a live flow; a hit refreshes it, an expired entry is removed.
    pub fn contains(&mut self, key: &FlowKey, now: Instant) -> bool {
        let Some(&i) = self.index.get(key) else {
            return false;
        };
        let fresh = self
            .slots
            .get(i)
            .is_some_and(|s| now.saturating_duration_since(s.last_seen) < FLOW_IDLE_TIMEOUT);
        if fresh {
            self.touch(i, now);
        } else {
            self.remove(i);
        }
        fresh
    }

    /// Drops idle flows. Recency order equals `last_seen` order, so this walks only the tail.
    pub fn expire(&mut self, now: Instant) {
        while let Some(s) = self.slots.get(self.tail) {
            if now.saturating_duration_since(s.last_seen) < FLOW_IDLE_TIMEOUT {
                break;
            }
            self.remove(self.tail);
        }
    }

    fn touch(&mut self, i: usize, now: Instant) {
        if let Some(s) = self.slots.get_mut(i) {
            // `now` is caller-supplied; never move a flow's clock backwards.
            s.last_seen = s.last_seen.max(now);
        }
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// Unlinks slot `i` and frees it by swapping the last slot into its place.
    fn remove(&mut self, i: usize) {
        let Some(key) = self.slots.get(i).map(|s| s.key) else {
            return;
        };
        self.index.remove(&key);
        self.unlink(i);
        let last = self.slots.len() - 1;
        if i != last {
            // Move the last slot into `i` and repair its neighbours and index entry.
            let (prev, next, moved_key) = match self.slots.get(last) {
                Some(s) => (s.prev, s.next, s.key),
                None => return,
            };
            self.slots.swap(i, last);
            self.set_next(prev, i);
            self.set_prev(next, i);
            if self.head == last {
                self.head = i;
            }
            if self.tail == last {
                self.tail = i;
            }
            self.index.insert(moved_key, i);
        }
        self.slots.pop();
    }

    fn unlink(&mut self, i: usize) {
        let Some((prev, next)) = self.slots.get(i).map(|s| (s.prev, s.next)) else {
            return;
        };
        self.set_next(prev, next);
        self.set_prev(next, prev);
        if self.head == i {
            self.head = next;
        }
        if self.tail == i {
            self.tail = prev;
        }
        if let Some(s) = self.slots.get_mut(i) {
            s.prev = NIL;
            s.next = NIL;
        }
    }

    fn push_front(&mut self, i: usize) {
        let old_head = self.head;
        if let Some(s) = self.slots.get_mut(i) {
            s.prev = NIL;
            s.next = old_head;
        }
        self.set_prev(old_head, i);
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn set_next(&mut self, at: usize, to: usize) {
        if let Some(s) = self.slots.get_mut(at) {
            s.next = to;
        }
    }

    fn set_prev(&mut self, at: usize, to: usize) {
        if let Some(s) = self.slots.get_mut(at) {
            s.prev = to;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            proto: 17,
            src: "100.64.0.2".parse().unwrap(),
            src_port: 53,
            dst: "100.64.0.1".parse().unwrap(),
            dst_port: port,
        }
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let t0 = Instant::now();
        let mut t = FlowTable::with_capacity(3);
        t.insert(key(1), t0);
        t.insert(key(2), t0);
        t.insert(key(3), t0);
        assert!(t.contains(&key(1), t0)); // 1 becomes most recent; 2 is now the oldest
        t.insert(key(4), t0);
        assert_eq!(t.len(), 3);
        assert!(!t.contains(&key(2), t0));
        assert!(t.contains(&key(1), t0));
        assert!(t.contains(&key(3), t0));
        assert!(t.contains(&key(4), t0));
    }

    #[test]
    fn idle_flows_expire() {
        let t0 = Instant::now();
        let mut t = FlowTable::default();
        t.insert(key(1), t0);
        t.insert(key(2), t0 + Duration::from_secs(60));
        assert!(t.contains(&key(1), t0 + Duration::from_secs(100)));
        assert!(!t.contains(&key(1), t0 + Duration::from_secs(100) + FLOW_IDLE_TIMEOUT));
        t.expire(t0 + Duration::from_secs(60) + FLOW_IDLE_TIMEOUT);
        assert!(t.is_empty());
    }

    #[test]
    fn churn_keeps_links_consistent() {
        let t0 = Instant::now();
        let mut t = FlowTable::with_capacity(8);
        for round in 0..200u16 {
            let now = t0 + Duration::from_secs(u64::from(round));
            t.insert(key(round % 13), now);
            if round % 5 == 0 {
                t.expire(now);
            }
            let _ = t.contains(
                &key(round % 7),
                now + FLOW_IDLE_TIMEOUT * u32::from(round % 3),
            );
            assert!(t.len() <= 8);
            // Walk the list from head and check it visits exactly len() slots.
            let (mut n, mut i) = (0, t.head);
            while i != NIL {
                n += 1;
                i = t.slots[i].next;
                assert!(n <= t.len());
            }
            assert_eq!(n, t.len());
        }
    }
}
