//! The workspace's one integration-test binary; each module is one area.

mod architecture;
mod deploy;
mod monitoring;
