//! The fast decoding path against the general one on arbitrary input: whatever the fast path
//! accepts, the general path must accept too, message for message, with the same result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipstream_protocol::{decode_paths, Limits};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Small limits as well as the defaults, so the limit checks of both paths are reached.
    let small = Limits { max_batch: 3, max_path: 2, max_key_bytes: 8, max_value_bytes: 16, ..Limits::default() };
    for limits in [Limits::default(), small] {
        let Some(fast) = decode_paths::fast(text, &limits) else { continue };
        let general = decode_paths::general(text, &limits)
            .unwrap_or_else(|e| panic!("fast path accepted what the general path rejects ({e}): {text}"));
        assert_eq!(general.len(), fast.len(), "message count of {text}");
        for (g, f) in general.into_iter().zip(fast) {
            let g = g.unwrap_or_else(|e| panic!("fast path accepted an invalid message ({e:?}): {text}"));
            assert_eq!(g, f, "decoded differently: {text}");
        }
    }
});
