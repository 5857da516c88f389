//! Test support shared by the protocol machines' tests.

use proptest::test_runner::Config as ProptestConfig;

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

/// Generated cases per property: `default` unless `PROPTEST_CASES` says otherwise (e.g.
/// `PROPTEST_CASES=100000` for a deep run).
pub(crate) fn proptest_config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        ..ProptestConfig::default()
    }
}
