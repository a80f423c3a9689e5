//! What the integration test files share: the binary under test, the patience of a wait, and
//! how a test starts a node. Each test file is a crate of its own and uses part of this.
#![allow(dead_code)]

use std::time::Duration;

use slipstream_testkit::{NodeOptions, TestNode};

/// The `slipstream` binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_slipstream");

/// How long a test waits for something that should happen: long, as the machines running the
/// tests are shared and slow at times; a wait ends as soon as what it waits for holds.
pub const LONG: Duration = Duration::from_secs(60);

/// Starts a node process on free ports with its own data folder.
pub fn start(opts: NodeOptions) -> TestNode {
    TestNode::start(BIN, opts).expect("node starts")
}
