//! `sqlx::migrate!` embeds the migrations at compile time but cannot tell
//! cargo to watch their directory on stable Rust; without this a new
//! migration file is missing from an incremental build (sqlx's documented
//! remedy, `sqlx migrate build-script`).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
