//! Hybrid logical clock stamps (SPEC §3).
//!
//! A stamp is a 64-bit number: the upper 48 bits are Unix milliseconds, the lower 16 bits a
//! logical counter. On the wire it is 16 lowercase hex digits, so string order is time order.
//! Convergence (last writer wins) compares stamps, so a node's clock must never go backwards
//! and must move past every stamp it receives.

use std::fmt;
use std::str::FromStr;

/// One HLC stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc(pub u64);

impl Hlc {
    const LOGICAL_BITS: u32 = 16;
    const LOGICAL_MASK: u64 = (1 << Self::LOGICAL_BITS) - 1;

    pub fn new(millis: u64, logical: u16) -> Self {
        Hlc((millis << Self::LOGICAL_BITS) | u64::from(logical))
    }

    /// Unix milliseconds of the physical part.
    pub fn millis(self) -> u64 {
        self.0 >> Self::LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        (self.0 & Self::LOGICAL_MASK) as u16
    }
}

/// A stamp's text (16 lowercase hex digits), held on the stack: written where a write is
/// stored and sent, without an allocation or integer formatting (`{:016x}` took about 800
/// instructions a stamp, callgrind).
#[derive(Clone, Copy)]
pub struct HlcText([u8; 16]);

impl HlcText {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl Hlc {
    pub fn to_text(self) -> HlcText {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 16];
        for (i, digit) in text.iter_mut().enumerate() {
            *digit = DIGITS[((self.0 >> ((15 - i) * 4)) & 0xf) as usize];
        }
        HlcText(text)
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_text().as_str())
    }
}

/// Why a string is not an HLC stamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 16 lowercase hex digits, e.g. 0192f3a4b5c60001")]
pub struct HlcParseError;

impl FromStr for Hlc {
    type Err = HlcParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(HlcParseError);
        }
        u64::from_str_radix(s, 16)
            .map(Hlc)
            .map_err(|_| HlcParseError)
    }
}

/// The node's clock. Pure: the caller passes the wall-clock reading, so tests and the
/// simulation drive time themselves.
#[derive(Debug, Default, Clone)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh stamp, greater than every stamp issued or observed before.
    pub fn tick(&mut self, wall_millis: u64) -> Hlc {
        let wall = Hlc::new(wall_millis, 0);
        self.last = if wall > self.last {
            wall
        } else {
            Hlc(self.last.0 + 1)
        };
        self.last
    }

    /// Moves the clock past a received stamp, so later local writes order after it.
    pub fn observe(&mut self, remote: Hlc) {
        if remote > self.last {
            self.last = remote;
        }
    }

    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_fixed_width_lowercase_hex() {
        let h = Hlc::new(0x0192_f3a4_b5c6, 1);
        assert_eq!(h.to_string(), "0192f3a4b5c60001");
        assert_eq!("0192f3a4b5c60001".parse::<Hlc>().unwrap(), h);
        assert_eq!(h.millis(), 0x0192_f3a4_b5c6);
        assert_eq!(h.logical(), 1);
        // Every digit, and both ends of the range, against the standard formatting.
        for v in [0, 1, 0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210, u64::MAX] {
            assert_eq!(Hlc(v).to_string(), format!("{v:016x}"));
            assert_eq!(Hlc(v).to_string().parse::<Hlc>().unwrap(), Hlc(v));
        }
    }

    #[test]
    fn rejects_malformed_stamps() {
        for bad in [
            "",
            "0192F3A4B5C60001",
            "0192f3a4b5c6000",
            "0192f3a4b5c6000g",
            "+192f3a4b5c60001",
        ] {
            assert!(bad.parse::<Hlc>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn string_order_is_time_order() {
        let a = Hlc::new(1000, 65535);
        let b = Hlc::new(1001, 0);
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn clock_never_goes_backwards_and_passes_observed_stamps() {
        let mut c = HlcClock::new();
        let t1 = c.tick(1000);
        let t2 = c.tick(999); // wall clock stepped back
        assert!(t2 > t1);
        c.observe(Hlc::new(5000, 7));
        let t3 = c.tick(1001);
        assert!(t3 > Hlc::new(5000, 7));
        let t4 = c.tick(6000);
        assert_eq!(t4, Hlc::new(6000, 0));
    }
}
