//! Received segments held beyond a gap (DESIGN.md, HTTP/2: "Loss: a segment ahead of a gap
//! is held"). Only received data reorders (sent data passes the hook in order; its
//! retransmissions are ranges seen again), so only the received direction holds.
//!
//! A direction whose parser waits at `next_seq` for missing bytes, with its frame state in
//! them, keeps the segments that arrive beyond the gap in a *window* of [`HOLD_BYTES`] bytes
//! starting at the gap (`base`, the parser's position when the first one was held): a segment
//! `[seq, seq + len)` is held if it lies inside `[base, base + HOLD_BYTES)` and the held bytes
//! stay at most [`HOLD_RANGES`] disjoint ranges. The bytes themselves live outside the
//! connection state (the kernel: a socket-storage value created only while something is held,
//! [`HOLD_BUF`] bytes); this is the bookkeeping, shared by the kernel and the tests. When the
//! parser reaches a held range (the gap's retransmission was parsed), the range is parsed
//! from the window as a segment of its own. What cannot be held falls back to the hull of
//! unparsed ranges ([`super::H2Dir`]'s `ahead_*`), as before holding existed.

/// Bytes of a hold window (a power of two): about three full-sized segments of a 1 500-byte
/// MTU, the lost one included (the window starts at the gap).
pub const HOLD_BYTES: usize = 4096;
/// Disjoint held ranges per window (a segment overtaken by later ones inside the gap makes
/// a second range until it arrives).
pub const HOLD_RANGES: usize = 8;

const _: () = assert!(HOLD_RANGES == 8, "`Lanes` holds eight ranges");
/// Bytes of the kernel's buffer value: the window and one [`crate::http::WINDOW`] of slack,
/// so a copy of at most `WINDOW` bytes at any offset below [`HOLD_BYTES`] stays inside the
/// value as the verifier sees it (the code never writes beyond `HOLD_BYTES`).
pub const HOLD_BUF: usize = HOLD_BYTES + crate::http::WINDOW;

/// [`Hold::flags`]: the direction's buffer exists (the kernel created its storage).
pub const HF_BUF: u8 = 1;
/// [`Hold::flags`]: holding is on — the caller copies held segments ([`super::H2Conn::take_copy`])
/// and parses due ranges ([`super::H2Conn::hold_due`]). Off (the kernel programs today, see
/// DESIGN.md), a segment beyond a gap waits unparsed as before.
pub const HF_ON: u8 = 32;
/// [`Hold::flags`]: the segment just seen is to be copied into the buffer at
/// [`Hold::copy_at`].
pub const HF_COPY: u8 = 2;
/// [`Hold::flags`] (the kernel's): a held range is due and the program's next run on this
/// packet (a tail call to itself) parses it from the buffer; set while it does.
pub const HF_REPLAY: u8 = 4;
/// [`Hold::flags`] (the kernel's): after the held range of [`HF_REPLAY`], the packet of that
/// run is still to be parsed (a state made at that packet with held bytes before it).
pub const HF_PKT: u8 = 8;
/// [`Hold::flags`] (the kernel's): a run parsed a received segment while something was held;
/// the program's next run on this packet (a tail call to itself) decides what is due
/// ([`Hold::pending`]).
pub const HF_AFTER: u8 = 16;

/// The held ranges of the received direction (offsets from `base`, sorted, disjoint and not
/// adjacent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Hold {
    /// Sequence number of window offset 0.
    pub base: u32,
    /// Range starts.
    pub lo: [u16; HOLD_RANGES],
    /// Range ends.
    pub hi: [u16; HOLD_RANGES],
    /// Ranges held.
    pub n: u8,
    /// `HF_*`.
    pub flags: u8,
    /// Where the segment of [`HF_COPY`] goes in the buffer.
    pub copy_at: u16,
}

/// Eight ranges' starts and ends in 16-bit lanes of four words ([`Hold::insert`]'s result).
#[derive(Default)]
struct Lanes {
    lo: (u64, u64),
    hi: (u64, u64),
}

impl Lanes {
    #[inline(always)]
    fn put(&mut self, m: u32, lo: u16, hi: u16) {
        let s = 16 * (m & 3);
        if m < 4 {
            self.lo.0 |= (lo as u64) << s;
            self.hi.0 |= (hi as u64) << s;
        } else {
            self.lo.1 |= (lo as u64) << s;
            self.hi.1 |= (hi as u64) << s;
        }
    }

    /// Lane `k` (a constant once unrolled) of the starts, or of the ends.
    #[inline(always)]
    fn get(&self, end: bool, k: usize) -> u16 {
        let (a, b) = if end { self.hi } else { self.lo };
        ((if k < 4 { a } else { b }) >> (16 * (k & 3))) as u16
    }
}

/// What [`Hold::insert`] did with a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Held: copy it at this window offset.
    Copy(u16),
    /// Every byte of it is held already.
    Dup,
    /// Outside the window, or one range too many: not held.
    No,
}

/// What the parser's position means for the window ([`Hold::due`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing to do.
    Nothing,
    /// Parse `len` held bytes at window offset `off` (sequence number `seq`) now.
    Replay {
        /// Sequence number of the first byte.
        seq: u32,
        /// Its window offset.
        off: u32,
        /// Bytes.
        len: u32,
    },
    /// Nothing is held any more: the buffer can go.
    Free,
}

impl Hold {
    /// Holds `[seq, seq + len)`, beyond the parser's `next_seq`. Out of line: its merge loop
    /// branches on every range, paths the kernel's verifier would otherwise carry on through
    /// the rest of `H2Conn::begin`.
    #[inline(never)]
    pub fn insert(&mut self, next_seq: u32, seq: u32, len: u32) -> Held {
        if self.n == 0 {
            self.base = next_seq;
        }
        let a = seq.wrapping_sub(self.base);
        if a >= HOLD_BYTES as u32 || len == 0 || len > HOLD_BYTES as u32 - a {
            return Held::No;
        }
        let mut lo = a as u16;
        let mut hi = (a + len) as u16;
        // The result is built in 16-bit lanes of words (four ranges a word), not in arrays on
        // the stack: the kernel's verifier refuses what LLVM makes of a variable index into a
        // stack array (an `or` on the frame pointer).
        let mut out = Lanes::default();
        let mut m = 0u32;
        let mut placed = false;
        let mut dup = false;
        let mut i = 0;
        while i < HOLD_RANGES {
            if i < self.n as usize {
                let (rl, rh) = (self.lo[i], self.hi[i]);
                if rh < lo || rl > hi {
                    if rl > hi && !placed {
                        if m >= HOLD_RANGES as u32 {
                            return Held::No;
                        }
                        out.put(m, lo, hi);
                        m += 1;
                        placed = true;
                    }
                    if m >= HOLD_RANGES as u32 {
                        return Held::No;
                    }
                    out.put(m, rl, rh);
                    m += 1;
                } else {
                    dup |= rl <= lo && hi <= rh;
                    lo = if rl < lo { rl } else { lo };
                    hi = if rh > hi { rh } else { hi };
                }
            }
            i += 1;
        }
        if dup {
            return Held::Dup;
        }
        if !placed {
            if m >= HOLD_RANGES as u32 {
                return Held::No;
            }
            out.put(m, lo, hi);
            m += 1;
        }
        let mut k = 0;
        while k < HOLD_RANGES {
            self.lo[k] = out.get(false, k);
            self.hi[k] = out.get(true, k);
            k += 1;
        }
        self.n = m as u8;
        Held::Copy(a as u16)
    }

    /// The parser is at `next_seq`: ranges it has passed are dropped; the first range, if the
    /// parser is inside it, is due.
    #[inline(always)]
    pub fn due(&mut self, next_seq: u32) -> Due {
        if self.n == 0 {
            return if self.flags & HF_BUF != 0 {
                Due::Free
            } else {
                Due::Nothing
            };
        }
        let pos = next_seq.wrapping_sub(self.base);
        let mut k = 0;
        while k < HOLD_RANGES {
            if self.n != 0 && pos >= self.hi[0] as u32 {
                self.pop();
            }
            k += 1;
        }
        if self.n == 0 {
            return if self.flags & HF_BUF != 0 {
                Due::Free
            } else {
                Due::Nothing
            };
        }
        if pos >= self.lo[0] as u32 {
            let hi = self.hi[0] as u32;
            return Due::Replay {
                seq: next_seq,
                off: pos,
                len: hi - pos,
            };
        }
        Due::Nothing
    }

    /// Whether [`Hold::due`] may have something to do with the parser at `next_seq`: a range
    /// reached or passed, or a buffer with nothing held (cheap: the kernel checks it after
    /// every received segment while something is held).
    #[inline(always)]
    pub fn pending(&self, next_seq: u32) -> bool {
        if self.n == 0 {
            return self.flags & HF_BUF != 0;
        }
        next_seq.wrapping_sub(self.base) >= self.lo[0] as u32
    }

    /// Whether the parser at `next_seq` is inside a held range (it will be parsed from the
    /// window before anything else is decided about the gap).
    #[inline(always)]
    pub fn covers(&self, next_seq: u32) -> bool {
        let pos = next_seq.wrapping_sub(self.base);
        self.n != 0 && pos >= self.lo[0] as u32 && pos < self.hi[0] as u32
    }

    /// End of the held bytes (sequence number), if any.
    #[inline(always)]
    pub fn end(&self) -> Option<u32> {
        if self.n == 0 {
            return None;
        }
        Some(
            self.base
                .wrapping_add(self.hi[(self.n as usize - 1) & (HOLD_RANGES - 1)] as u32),
        )
    }

    /// Drops the first range.
    #[inline(always)]
    fn pop(&mut self) {
        let mut i = 0;
        while i + 1 < HOLD_RANGES {
            self.lo[i] = self.lo[i + 1];
            self.hi[i] = self.hi[i + 1];
            i += 1;
        }
        self.n -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_stay_bounded_and_come_due_in_order() {
        let mut h = Hold::default();
        // The parser waits at 1 000; segments beyond it arrive out of order.
        assert_eq!(h.insert(1_000, 1_100, 50), Held::Copy(100));
        assert_eq!(h.insert(1_000, 1_300, 50), Held::Copy(300));
        assert_eq!(h.insert(1_000, 1_150, 50), Held::Copy(150)); // touches the first
        assert_eq!(
            (h.n, h.lo[0], h.hi[0], h.lo[1], h.hi[1]),
            (2, 100, 200, 300, 350)
        );
        assert_eq!(h.insert(1_000, 1_120, 20), Held::Dup);
        assert_eq!(h.insert(1_000, 1_500, 10), Held::Copy(500));
        assert_eq!(h.insert(1_000, 1_600, 10), Held::Copy(600));
        // Four more ranges fill the table, the ninth does not fit; one past the window neither.
        for k in 0..4 {
            assert_eq!(
                h.insert(1_000, 1_700 + 100 * k, 10),
                Held::Copy(700 + 100 * k as u16)
            );
        }
        assert_eq!(h.n as usize, HOLD_RANGES);
        assert_eq!((h.lo[7], h.hi[7]), (1_000, 1_010));
        assert_eq!(h.insert(1_000, 2_100, 10), Held::No);
        assert_eq!(h.insert(1_000, 1_000 + HOLD_BYTES as u32 - 5, 10), Held::No);
        // Filling between ranges merges them; the table stays sorted.
        assert_eq!(h.insert(1_000, 1_350, 150), Held::Copy(350));
        assert_eq!(h.n, 7);
        assert_eq!(
            (h.lo[1], h.hi[1], h.lo[2], h.hi[2], h.lo[6], h.hi[6]),
            (300, 510, 600, 610, 1_000, 1_010)
        );
        assert_eq!(h.insert(1_000, 2_100, 10), Held::Copy(1_100));
        assert_eq!(h.insert(1_000, 1_705, 400), Held::Copy(705));
        assert_eq!(h.n, 4);
        assert_eq!((h.lo[3], h.hi[3]), (700, 1_110));
        assert_eq!(h.end(), Some(2_110));
        // Back to the figures below: the ranges beyond 610 go (as if never held).
        h.n = 3;
        h.flags = HF_BUF;
        assert_eq!(h.due(1_050), Due::Nothing);
        assert!(!h.covers(1_050));
        assert!(h.covers(1_100));
        assert_eq!(
            h.due(1_100),
            Due::Replay {
                seq: 1_100,
                off: 100,
                len: 100
            }
        );
        // Parsed past the first range (and into the second).
        assert_eq!(
            h.due(1_320),
            Due::Replay {
                seq: 1_320,
                off: 320,
                len: 190
            }
        );
        assert_eq!(h.end(), Some(1_610));
        assert_eq!(h.due(2_000), Due::Free);
        assert_eq!(h.n, 0);
    }
}
