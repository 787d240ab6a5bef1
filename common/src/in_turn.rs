//! Broker addresses tried in turn: a client that cannot connect, or loses its connection, moves on
//! to the next address (wrapping round), so with the nodes of a cluster it reaches a surviving one by
//! itself. The pause between attempts is [`crate::backoff`]'s, as with one broker.

/// A non-empty list and the entry in use.
#[derive(Debug, Clone)]
pub struct InTurn<T> {
    entries: Vec<T>,
    current: usize,
}

impl<T> InTurn<T> {
    /// `None` for an empty list.
    pub fn new(entries: Vec<T>) -> Option<Self> {
        (!entries.is_empty()).then_some(Self {
            entries,
            current: 0,
        })
    }

    /// The entry to use now; the first one until [`Self::advance`].
    pub fn current(&self) -> &T {
        &self.entries[self.current]
    }

    /// Moves to the next entry, after the last one back to the first, and returns it.
    pub fn advance(&mut self) -> &T {
        self.current = (self.current + 1) % self.entries.len();
        self.current()
    }
}

/// `host:port` for logs, from rumqttc's `broker_address()` (`[v6]:port` for an IPv6 address).
pub fn address((host, port): (String, u16)) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_round_the_entries_from_the_first() {
        let mut hosts = InTurn::new(vec!["a", "b", "c"]).unwrap();
        assert_eq!(*hosts.current(), "a");
        let visited: Vec<_> = (0..4).map(|_| *hosts.advance()).collect();
        assert_eq!(visited, ["b", "c", "a", "b"]);
        let mut single = InTurn::new(vec![1]).unwrap();
        assert_eq!((*single.advance(), *single.advance()), (1, 1));
        assert!(InTurn::<u8>::new(Vec::new()).is_none());
        assert_eq!(address(("::1".into(), 1883)), "[::1]:1883");
        assert_eq!(address(("node-1".into(), 1883)), "node-1:1883");
    }
}
