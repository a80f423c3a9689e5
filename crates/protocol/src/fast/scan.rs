//! A hand-written reader for the frames Slipstream's own nodes and clients send: objects of
//! string fields and arrays of strings, nothing else.
//!
//! serde_json's derived reader took about 8,400 instructions per write at a replica, a
//! seventh of all its work (BENCHMARKS.md, "counted in instructions"): it visits every byte
//! through its generic machinery and matches field names one by one. This reader fills the
//! same [`Raw`] straight from the bytes. It gives up (`None`) on anything outside that shape:
//! numbers, objects as values (weighted values), booleans, unknown or repeated fields, bad
//! escapes, control characters, trailing text. Then the serde reader tries, and after it the
//! general path, which names the problem. So it must only never take a frame that serde
//! would read differently; the tests and the differential fuzz target (`fuzz/`) check that.

use std::borrow::Cow;

use super::{Raw, RawValue, Str};

/// The frame's messages as [`Raw`]s: one object, or an array of 1 to `max_batch` objects.
pub(super) fn frame(text: &str, max_batch: usize) -> Option<Vec<Raw<'_>>> {
    let mut s = Scanner { text, at: 0 };
    let raws = match s.peek()? {
        b'{' => vec![s.object()?],
        b'[' => {
            s.at += 1;
            // Sized for messages of about 128 bytes (writes run 150–400) instead of grown:
            // a `Raw` takes a few hundred bytes, and growing copied each several times.
            let mut raws = Vec::with_capacity((text.len() / 128).clamp(1, max_batch));
            loop {
                if raws.len() == max_batch {
                    return None;
                }
                raws.push(s.object()?);
                match s.next()? {
                    b',' => continue,
                    b']' => break,
                    _ => return None,
                }
            }
            raws
        }
        _ => return None,
    };
    s.skip_ws();
    (s.at == s.bytes().len()).then_some(raws)
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

/// The number of a field of [`Raw`], its bit in the set of fields already read.
fn field(name: &str) -> Option<u32> {
    Some(match name {
        "type" => 0,
        "key" => 1,
        "value" => 2,
        "command" => 3,
        "args" => 4,
        "messageId" => 5,
        "messageIds" => 6,
        "originInstanceId" => 7,
        "sourceInstanceId" => 8,
        "messagePath" => 9,
        "targetedTags" => 10,
        "clusterGroupId" => 11,
        "hlc" => 12,
        "relayTo" => 13,
        _ => return None,
    })
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes().get(self.at).copied()
    }

    /// The next byte after whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    /// Consumes `null` if it comes next. (What follows it is checked by the caller, which
    /// expects `,`, `}` or `]`.)
    fn null(&mut self) -> bool {
        self.skip_ws();
        let null = self.bytes()[self.at..].starts_with(b"null");
        if null {
            self.at += 4;
        }
        null
    }

    fn object(&mut self) -> Option<Raw<'a>> {
        if self.next()? != b'{' {
            return None;
        }
        let mut seen = 0u16;
        let mut ty = None;
        let mut raw = Raw {
            ty: Str(Cow::Borrowed("")),
            key: None,
            value: None,
            command: None,
            args: None,
            message_id: None,
            message_ids: None,
            origin_instance_id: None,
            source_instance_id: None,
            message_path: None,
            targeted_tags: None,
            cluster_group_id: None,
            hlc: None,
            relay_to: None,
        };
        loop {
            let name = self.string()?;
            let field = field(&name)?;
            if seen & (1 << field) != 0 {
                return None;
            }
            seen |= 1 << field;
            if self.next()? != b':' {
                return None;
            }
            match field {
                0 => ty = Some(self.string()?),
                1 => raw.key = self.optional_string()?,
                2 => raw.value = self.value()?,
                3 => raw.command = self.optional_string()?,
                4 => raw.args = self.optional_list()?,
                5 => raw.message_id = self.optional_string()?,
                6 => raw.message_ids = self.optional_list()?,
                7 => raw.origin_instance_id = self.optional_string()?,
                8 => raw.source_instance_id = self.optional_string()?,
                9 => raw.message_path = self.optional_list()?,
                10 => raw.targeted_tags = self.optional_list()?,
                11 => raw.cluster_group_id = self.optional_string()?,
                12 => raw.hlc = self.optional_string()?,
                _ => raw.relay_to = self.optional_list()?,
            }
            match self.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
        raw.ty = ty?;
        Some(raw)
    }

    fn optional_string(&mut self) -> Option<Option<Str<'a>>> {
        if self.null() {
            return Some(None);
        }
        self.string().map(Some)
    }

    fn optional_list(&mut self) -> Option<Option<Vec<Str<'a>>>> {
        if self.null() {
            return Some(None);
        }
        self.list().map(Some)
    }

    /// A `value`: a string or an array of strings (weighted values are left to serde).
    fn value(&mut self) -> Option<Option<RawValue>> {
        if self.null() {
            return Some(None);
        }
        Some(Some(match self.peek()? {
            b'"' => RawValue::String(self.string()?.into_owned()),
            b'[' => RawValue::Array(self.list()?.into_iter().map(Str::into_owned).collect()),
            _ => return None,
        }))
    }

    fn list(&mut self) -> Option<Vec<Str<'a>>> {
        if self.next()? != b'[' {
            return None;
        }
        let mut items = Vec::new();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(items);
        }
        loop {
            items.push(self.string()?);
            match self.next()? {
                b',' => continue,
                b']' => return Some(items),
                _ => return None,
            }
        }
    }

    /// A string, borrowed from the frame when it has no escapes.
    fn string(&mut self) -> Option<Str<'a>> {
        if self.next()? != b'"' {
            return None;
        }
        let start = self.at;
        self.plain_run();
        match *self.bytes().get(self.at)? {
            b'"' => {
                // Both ends sit next to an ASCII quote, so they are char boundaries.
                let s = &self.text[start..self.at];
                self.at += 1;
                Some(Str(Cow::Borrowed(s)))
            }
            b'\\' => self.escaped(start).map(|s| Str(Cow::Owned(s))),
            _ => None,
        }
    }

    /// Moves to the next quote, backslash or control character (which JSON does not allow
    /// unescaped, and no caller accepts), or to the end: eight bytes at a time, as most
    /// strings on the wire are ids and keys of 10 to 40 bytes, too short for a library
    /// search's setup to pay off.
    fn plain_run(&mut self) {
        const ONES: u64 = u64::from_ne_bytes([1; 8]);
        const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
        let bytes = self.bytes();
        let mut at = self.at;
        while let Some(chunk) = bytes.get(at..at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            // A byte's high bit is set where the byte is below `n`: (x - n) & !x & 0x80,
            // per byte, for n <= 0x80 (a byte equal to c is one where x ^ c is below 1). A
            // borrow can set it also above a byte that is, never below one, so the lowest
            // set bit is always the first byte that stops the run.
            let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x;
            let quote = word ^ (ONES * u64::from(b'"'));
            let backslash = word ^ (ONES * u64::from(b'\\'));
            let stops = (below(quote, 1) | below(backslash, 1) | below(word, 0x20)) & HIGH;
            if stops != 0 {
                self.at = at + (stops.trailing_zeros() / 8) as usize;
                return;
            }
            at += 8;
        }
        while let Some(&b) = bytes.get(at) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            at += 1;
        }
        self.at = at;
    }

    /// The rest of a string that has escapes, from its first backslash.
    fn escaped(&mut self, start: usize) -> Option<String> {
        let mut out = String::with_capacity(self.at - start + 16);
        out.push_str(&self.text[start..self.at]);
        loop {
            match *self.bytes().get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(out);
                }
                b'\\' => {
                    let escape = *self.bytes().get(self.at + 1)?;
                    self.at += 2;
                    out.push(match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return None,
                    });
                }
                0..=0x1f => return None,
                _ => {
                    // A run of plain bytes; it starts and ends beside ASCII, on char
                    // boundaries.
                    let run = self.at;
                    self.plain_run();
                    out.push_str(&self.text[run..self.at]);
                }
            }
        }
    }

    /// The character of a `\u` escape whose `\u` was read, with the second half of a
    /// surrogate pair; a lone surrogate gives up, as serde_json rejects it.
    fn unicode_escape(&mut self) -> Option<char> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if self.bytes().get(self.at..self.at + 2)? != b"\\u" {
                    return None;
                }
                self.at += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return None;
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return None,
            _ => first,
        };
        char::from_u32(code)
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes().get(self.at..self.at + 4)?;
        let mut n = 0;
        for &d in digits {
            n = n * 16 + char::from(d).to_digit(16)?;
        }
        self.at += 4;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time search stops where a byte-by-byte one does, whatever the bytes
    /// around the stop and wherever it falls in a word.
    #[test]
    fn plain_runs_stop_where_a_byte_by_byte_search_does() {
        let fillers = [
            "a", " ", "!", "#", "[", "]", "\u{7f}", "é", "€", "😀", "\u{a0}",
        ];
        let stops = ["\"", "\\", "\u{0}", "\u{1f}", "\n"];
        for len in 0..24 {
            for filler in fillers {
                let base: String = (0..len).map(|i| fillers[(i * 7) % fillers.len()]).collect();
                let mut texts = vec![base.clone(), format!("{base}{filler}")];
                for stop in stops {
                    texts.push(format!("{base}{stop}{filler}{stop}"));
                }
                for text in texts {
                    let naive = text
                        .bytes()
                        .position(|b| b == b'"' || b == b'\\' || b < 0x20)
                        .unwrap_or(text.len());
                    let mut s = Scanner { text: &text, at: 0 };
                    s.plain_run();
                    assert_eq!(s.at, naive, "{text:?}");
                }
            }
        }
    }
}
