//! Correlate: attribute guesses to the client that made them.

/// Live lookup of the client a sendmail child is serving, from its process title.
/// The daemon implements it over /proc (`crate::proctitle`); replay has none.
pub trait LiveAttribution {
    /// The client address of sendmail child `pid` while it serves queue id `queue_id`,
    /// read from its process title; `None` when unknown or when the title does not
    /// belong to that session (a recycled pid, a new transaction).
    fn client_of(&self, pid: u32, queue_id: &str) -> Option<std::net::IpAddr>;
}
