//! The runtime every pipeline and connector runs on: the commit core ([`ledger`]) that
//! decides what to commit and when, whatever the source and the sink.

pub mod ledger;
