//! The forwarding buffers a worker keeps spare between reads.
//!
//! Owns: the spare buffers of each buffer size and their bound ([`SPARE_BUFFERS`]). Does not own:
//! when a direction takes or gives back a buffer (`pump`), nor the buffers it holds meanwhile.

use std::cell::RefCell;

/// Forwarding buffers no direction holds right now, kept by each worker for the next read (one
/// thread: `RefCell`). Without them, every burst of data would allocate and free a buffer.
#[derive(Default)]
pub(in crate::dataplane) struct SpareBuffers {
    /// (buffer size, spare buffers of exactly that capacity, empty): one entry per distinct
    /// `buffer_size` among the services, so a handful at most.
    sizes: RefCell<Vec<(usize, Vec<Vec<u8>>)>>,
}

/// Spare buffers a worker keeps per buffer size: enough for the writes of a few hundred busy
/// connections in flight at once to find a buffer without the allocator, few enough that the
/// spares stay small next to the live buffers they serve (2 MiB per worker at the 16 KiB
/// default). Buffers given back beyond it are freed.
const SPARE_BUFFERS: usize = 128;

impl SpareBuffers {
    /// A buffer with capacity for `size` bytes: a spare one if there is one, else a new one.
    pub(super) fn take(&self, size: usize) -> Vec<u8> {
        let mut sizes = self.sizes.borrow_mut();
        sizes
            .iter_mut()
            .find(|(s, _)| *s == size)
            .and_then(|(_, spares)| spares.pop())
            .unwrap_or_else(|| Vec::with_capacity(size))
    }

    /// Keeps `buf`, taken for `size` bytes, for the next [`SpareBuffers::take`] of that size.
    pub(super) fn give(&self, size: usize, mut buf: Vec<u8>) {
        buf.clear();
        let mut sizes = self.sizes.borrow_mut();
        let spares = match sizes.iter_mut().position(|(s, _)| *s == size) {
            Some(i) => &mut sizes[i].1,
            None => {
                sizes.push((size, Vec::new()));
                &mut sizes.last_mut().expect("just pushed").1
            }
        };
        if spares.len() < SPARE_BUFFERS {
            spares.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare_count(spares: &SpareBuffers, size: usize) -> usize {
        let sizes = spares.sizes.borrow();
        sizes
            .iter()
            .find(|(s, _)| *s == size)
            .map_or(0, |(_, v)| v.len())
    }

    #[test]
    fn a_buffer_given_back_is_taken_again_for_its_size_only() {
        let spares = SpareBuffers::default();
        let mut a = spares.take(1024);
        assert_eq!(a.capacity(), 1024);
        a.extend_from_slice(b"data");
        let at = a.as_ptr();
        spares.give(1024, a);
        let other = spares.take(2048);
        assert_eq!(other.capacity(), 2048);
        assert_ne!(other.as_ptr(), at, "another size gets a buffer of its own");
        let again = spares.take(1024);
        assert_eq!(again.as_ptr(), at, "the spare is reused");
        assert!(again.is_empty(), "a spare comes back empty");
        assert_eq!(spare_count(&spares, 1024), 0);
    }

    #[test]
    fn spares_beyond_the_bound_are_freed() {
        let spares = SpareBuffers::default();
        for _ in 0..SPARE_BUFFERS + 10 {
            spares.give(512, Vec::with_capacity(512));
        }
        assert_eq!(spare_count(&spares, 512), SPARE_BUFFERS);
    }
}
