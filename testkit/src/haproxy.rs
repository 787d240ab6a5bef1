//! A real HAProxy (Debian's package) in front of an edge, as an operator's load balancer: either at
//! L4, passing TCP (and TLS) through with a PROXY protocol header, or at L7, adding
//! `X-Forwarded-For`. It listens on `127.0.0.1` and connects to the edge from `127.0.0.1`.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::free_port;

/// How HAProxy hands connections on to the edge.
#[derive(Debug, Clone, Copy)]
pub enum Balancing {
    /// L4 (`mode tcp`) with `send-proxy`: a PROXY v1 text header, then the client's bytes.
    ProxyV1,
    /// L4 with `send-proxy-v2`: a binary PROXY v2 header, then the client's bytes (TLS passes through).
    ProxyV2,
    /// L7 (`mode http`) with `option forwardfor`: the client's address appended as `X-Forwarded-For`.
    ForwardFor,
}

pub struct Haproxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    child: Child,
    /// Holds the config.
    _dir: TempDir,
}

impl Haproxy {
    /// Starts HAProxy balancing to the single server `backend` and waits until it accepts connections.
    pub fn start(balancing: Balancing, backend: SocketAddr) -> Self {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let (mode, server_options) = match balancing {
            Balancing::ProxyV1 => ("mode tcp", "send-proxy"),
            Balancing::ProxyV2 => ("mode tcp", "send-proxy-v2"),
            Balancing::ForwardFor => ("mode http\n    option forwardfor", ""),
        };
        let config = format!(
            "defaults\n    {mode}\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
             frontend pixel\n    bind {addr}\n    default_backend edge\n\
             backend edge\n    server edge {backend} source 127.0.0.1 {server_options}\n"
        );
        let dir = tempfile::tempdir().expect("temp dir for haproxy");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy must be installed: run scripts/test, which installs it");
        let haproxy = Self {
            addr,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        haproxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
