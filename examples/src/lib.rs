//! Embedding examples for the Saldo sdk. Run them with
//! `cargo run -p saldo-examples --example wallet_ledger` (a wallet service
//! built on `saldo-ledger`) and `--example order_flow` (an order placed and
//! carried through the saga on the in-memory store, the way the hosts do it).
