//! `privacy.ip = truncate`: the address with all but its leading bits zeroed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How many leading bits `truncate` keeps, per address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefixes {
    /// 0 to 32.
    pub v4: u8,
    /// 0 to 128.
    pub v6: u8,
}

/// `ip` cut to its prefix; an IPv4-mapped IPv6 address is cut as the IPv4 address it is.
pub fn truncate(ip: IpAddr, prefixes: Prefixes) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefixes.v4))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefixes.v6))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(ip: &str, v4: u8, v6: u8) -> String {
        truncate(ip.parse().unwrap(), Prefixes { v4, v6 }).to_string()
    }

    #[test]
    fn ipv4_keeps_its_prefix() {
        assert_eq!(cut("192.168.1.77", 24, 48), "192.168.1.0");
        assert_eq!(cut("192.168.1.77", 16, 48), "192.168.0.0");
        assert_eq!(cut("192.168.1.77", 20, 48), "192.168.0.0");
        assert_eq!(cut("192.168.31.77", 20, 48), "192.168.16.0");
        assert_eq!(cut("192.168.1.77", 32, 48), "192.168.1.77");
        assert_eq!(cut("192.168.1.77", 0, 48), "0.0.0.0");
    }

    #[test]
    fn ipv6_keeps_its_prefix() {
        assert_eq!(cut("2001:db8:abcd:12::1", 24, 48), "2001:db8:abcd::");
        assert_eq!(cut("2001:db8:abcd:12ff::1", 24, 56), "2001:db8:abcd:1200::");
        assert_eq!(cut("2001:db8:abcd:12::1", 24, 128), "2001:db8:abcd:12::1");
        assert_eq!(cut("2001:db8:abcd:12::1", 24, 0), "::");
        assert_eq!(cut("::1", 24, 48), "::");
        assert_eq!(cut("::1", 24, 128), "::1");
    }

    #[test]
    fn an_ipv4_mapped_address_is_cut_as_ipv4() {
        assert_eq!(cut("::ffff:192.168.1.77", 24, 48), "192.168.1.0");
        assert_eq!(cut("::ffff:192.168.1.77", 0, 128), "0.0.0.0");
    }
}
