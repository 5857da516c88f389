//! Test support shared by the protocol machines' tests.

use crate::http::{Payload, Scratch, WINDOW};

/// A packet's payload as a byte slice: loads fail past its end, as the kernel's do.
pub(crate) struct Slice<'a>(pub &'a [u8]);

impl Payload for Slice<'_> {
    fn load(&mut self, off: u32, dst: &mut Scratch, len: u32) -> bool {
        let (off, len) = (off as usize, len as usize);
        assert!((1..=WINDOW).contains(&len), "load of {len} bytes");
        if off + len > self.0.len() {
            return false;
        }
        dst.bytes[..len].copy_from_slice(&self.0[off..off + len]);
        true
    }
}
