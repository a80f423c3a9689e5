//! Frame decoding and routing on arbitrary input: nothing may panic, and every message that
//! decodes must encode and decode back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipstream_protocol::{decode_frame, Limits};
use slipstream_router::{KnownPeer, Router, RouterConfig, Sender};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(items) = decode_frame(text, &Limits::default()) else { return };
    let mut router = Router::new(RouterConfig::new("me"));
    router.upsert_peer("p", KnownPeer { tags: vec!["aws".into()] });
    let roomy = Limits { max_frame_bytes: usize::MAX, max_key_bytes: usize::MAX, max_value_bytes: usize::MAX, ..Limits::default() };
    for msg in items.into_iter().flatten() {
        let again = decode_frame(&msg.encode(), &roomy).expect("an encoded message decodes");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].as_ref().expect("and is valid"), &msg, "round trip of {text}");
        if msg.message_type().is_write() {
            let _ = router.route(&Sender::Peer("p".into()), msg.clone(), 1);
            let _ = router.route(&Sender::Client, msg, 2);
        }
    }
});
