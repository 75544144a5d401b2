//! Workspace-level checks shared by the test binaries under `tests/tests/`.
//!
//! [`architecture`] reads the workspace's own metadata and sources and says
//! which rule of the architecture, if any, is broken: the sdk is pure (no
//! I/O crates, no hosts or harness crates, no std clock, filesystem,
//! network, threads, processes or environment).

pub mod architecture;
