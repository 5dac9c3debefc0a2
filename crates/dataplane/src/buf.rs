//! Reusable packet buffers, so the per-packet path does not allocate once warmed up.
//!
//! Driven by the engine: it takes a [`PacketBuf`] from its [`BufferPool`] for each transmit or TUN
//! write and the caller hands it back with `Engine::recycle` after the I/O is done. A buffer's
//! backing `Vec` only grows (to the largest packet it has carried), so steady traffic never
//! reallocates or re-zeroes memory.

use std::fmt;
use std::ops::Deref;

/// One packet's bytes inside a reusable backing buffer.
#[derive(Default)]
pub struct PacketBuf {
    data: Vec<u8>,
    start: usize,
    len: usize,
}

impl PacketBuf {
    /// A buffer holding a copy of `bytes` (allocates; for tests and cold paths).
    pub fn from_slice(bytes: &[u8]) -> Self {
        PacketBuf {
            data: bytes.to_vec(),
            start: 0,
            len: bytes.len(),
        }
    }

    /// The packet bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.data
            .get(self.start..self.start.saturating_add(self.len))
            .unwrap_or(&[])
    }

    /// The whole backing storage, grown to at least `min` bytes, for a writer to fill.
    pub(crate) fn storage(&mut self, min: usize) -> &mut [u8] {
        if self.data.len() < min {
            self.data.resize(min, 0);
        }
        self.start = 0;
        self.len = 0;
        &mut self.data
    }

    /// Marks `start..start + len` of the storage as the packet (clamped to the storage).
    pub(crate) fn set_window(&mut self, start: usize, len: usize) {
        self.start = start.min(self.data.len());
        self.len = len.min(self.data.len() - self.start);
    }

    /// Copies `bytes` in as the packet.
    pub(crate) fn fill(&mut self, bytes: &[u8]) {
        let dst = self.storage(bytes.len());
        if let Some(d) = dst.get_mut(..bytes.len()) {
            d.copy_from_slice(bytes);
        }
        self.set_window(0, bytes.len());
    }
}

impl Deref for PacketBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for PacketBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PacketBuf({} bytes)", self.len)
    }
}

/// A free list of buffers.
#[derive(Debug)]
pub struct BufferPool {
    free: Vec<PacketBuf>,
    max_free: usize,
}

impl BufferPool {
    /// A pool that keeps at most `max_free` idle buffers.
    pub fn new(max_free: usize) -> Self {
        BufferPool {
            free: Vec::new(),
            max_free,
        }
    }

    /// A buffer from the free list, or a new empty one.
    pub fn take(&mut self) -> PacketBuf {
        self.free.pop().unwrap_or_default()
    }

    /// Returns a buffer for reuse.
    pub fn put(&mut self, buf: PacketBuf) {
        if self.free.len() < self.max_free {
            self.free.push(buf);
        }
    }

    /// Idle buffers held.
    pub fn idle(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_without_shrinking() {
        let mut pool = BufferPool::new(4);
        let mut b = pool.take();
        b.fill(&[1, 2, 3, 4, 5]);
        assert_eq!(&*b, &[1, 2, 3, 4, 5]);
        let cap = b.data.capacity();
        pool.put(b);
        let mut b = pool.take();
        b.fill(&[9]);
        assert_eq!(&*b, &[9]);
        assert_eq!(b.data.capacity(), cap);
        b.set_window(2, 100);
        assert_eq!(b.len(), 3);
    }
}
