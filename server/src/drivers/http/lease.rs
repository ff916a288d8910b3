//! Lease bookkeeping for cloud sandboxes that end on their own: when the current lease ends, and what renews it.

use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;

use super::GoneFlag;
use crate::drivers::Lease;

/// What sandlink knows of one sandbox's lease, updated by creates, extensions and status reads.
pub struct LeaseBook {
    /// When the provider will end the sandbox, as of the last create, connect, extension or status read.
    expires_at: Mutex<OffsetDateTime>,
    /// How many seconds one extension buys.
    extend_seconds: u64,
    /// Editor activity older than this no longer counts as use.
    idle_window: Duration,
}

impl LeaseBook {
    /// A lease of `seconds` that began now (the sandbox was just created or connected with that timeout).
    pub fn starting_now(seconds: u64, idle_window: Duration) -> Self {
        LeaseBook {
            expires_at: Mutex::new(OffsetDateTime::now_utc() + Duration::from_secs(seconds)),
            extend_seconds: seconds,
            idle_window,
        }
    }

    /// Records an extension that set the end to now plus `seconds`, and answers the new end.
    pub fn extended_by(&self, seconds: u64) -> OffsetDateTime {
        let expires_at = OffsetDateTime::now_utc() + Duration::from_secs(seconds);
        self.set_expires_at(expires_at);
        expires_at
    }

    /// Records the end the provider reported (RFC 3339); an end it wrote some other way changes nothing.
    pub fn observed_end(&self, end_at: &str) {
        if let Ok(when) = OffsetDateTime::parse(end_at, &time::format_description::well_known::Rfc3339) {
            self.set_expires_at(when);
        }
    }

    pub fn expires_at(&self) -> OffsetDateTime {
        *crate::locks::lock(&self.expires_at)
    }

    fn set_expires_at(&self, when: OffsetDateTime) {
        *crate::locks::lock(&self.expires_at) = when;
    }

    /// The lease as the engine's keepalive sees it, with what `gone` knows.
    pub fn lease(&self, gone: &GoneFlag) -> Lease {
        Lease {
            expires_at: self.expires_at(),
            extend_seconds: self.extend_seconds,
            idle_window: self.idle_window,
            gone: gone.get(),
        }
    }
}

/// An instant as RFC 3339, the form the protocol carries.
pub fn rfc3339(when: OffsetDateTime) -> String {
    when.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
