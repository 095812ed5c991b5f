//! The runtime every pipeline and connector runs on: the commit core ([`ledger`]) that
//! decides what to commit and when, whatever the source and the sink; the [`Source`]
//! and [`Sink`] traits; and the [`pump`] that moves records from one to the other
//! through the commit core.
//!
//! [`Source`]: source::Source
//! [`Sink`]: sink::Sink

pub mod ledger;
pub mod pump;
pub mod sink;
pub mod source;
