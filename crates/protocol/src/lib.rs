//! Slipstream's wire protocol (SPEC §3): the message model, frame decoding with errors that
//! name the offending field, encoding, and the hybrid logical clock.
//!
//! Nothing here does I/O; the router and the network layer build on these types.

pub mod codec;
mod fast;
pub mod hlc;
pub mod message;

pub use codec::{
    decode_frame, encode_acks, encode_batch, join_encoded, json_strings, FrameError, Limits,
};
pub use hlc::{Hlc, HlcClock};
pub use message::{
    Body, Envelope, Hello, Invalid, Message, MessageType, Response, Role, Value, ValueKind,
    Version, DEFAULT_CLUSTER_GROUP, PROTOCOL_VERSION,
};

/// The two decoding paths on their own, for the differential fuzz target (`fuzz/`), which
/// checks that the fast path accepts only what the general path accepts, with the same result.
/// Everything else uses [`decode_frame`], which picks the path.
#[doc(hidden)]
pub mod decode_paths {
    pub use crate::codec::decode_frame_general as general;
    pub use crate::fast::decode_frame as fast;
}

#[cfg(test)]
mod tests;
