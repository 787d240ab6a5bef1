//! `http.proxy_protocol`: the PROXY protocol header (v1 text or v2 binary, as HAProxy, AWS NLB and
//! other L4 balancers send it) that opens every connection on the pixel listeners, before TLS. The
//! source address it names is the connection's client; a connection that does not open with a valid
//! header is refused. Parsing is `ppp`'s; this module only reads the header off the stream and hands
//! on what came after it.

use std::io::Cursor;
use std::net::SocketAddr;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::{AsyncReadExt, Chain, Join};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The longest header accepted. A v1 header is at most 107 bytes; v2 headers carry TLVs (AWS adds a
/// VPC endpoint id, HAProxy may add TLS details), which stay well below this.
const MAX_HEADER_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("not a PROXY protocol header: {0}")]
    Invalid(String),
    #[error("the PROXY protocol header is longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    #[error("the connection ended before a whole PROXY protocol header")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// A complete header: how long it is, and the client it names.
#[derive(Debug, PartialEq)]
pub struct ProxyHeader {
    pub len: usize,
    /// `None` for a health check the balancer makes itself (v2 `LOCAL`, v1 `UNKNOWN`) or a
    /// non-IP source: the TCP peer is then the client, as the specification says.
    pub source: Option<SocketAddr>,
}

/// The connection after its header: the bytes read past the header, then the rest of the stream.
pub type ProxiedStream = Join<Chain<Cursor<Vec<u8>>, OwnedReadHalf>, OwnedWriteHalf>;

/// Parses the header at the start of `input`; `Ok(None)` while more bytes could still make it valid.
pub fn parse(input: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    let result = HeaderResult::parse(input);
    if result.is_incomplete() {
        return match input.len() < MAX_HEADER_BYTES {
            true => Ok(None),
            false => Err(ProxyHeaderError::TooLong),
        };
    }
    let header = match result {
        HeaderResult::V1(Ok(header)) => ProxyHeader {
            len: header.header.len(),
            source: match header.addresses {
                v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
                v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(header)) => ProxyHeader {
            len: header.len(),
            source: match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some((a.source_address, a.source_port).into())
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some((a.source_address, a.source_port).into())
                }
                _ => None,
            },
        },
        HeaderResult::V1(Err(err)) => return Err(ProxyHeaderError::Invalid(err.to_string())),
        HeaderResult::V2(Err(err)) => return Err(ProxyHeaderError::Invalid(err.to_string())),
    };
    if header.len > MAX_HEADER_BYTES {
        return Err(ProxyHeaderError::TooLong);
    }
    Ok(Some(header))
}

/// Reads the header that opens `stream`; returns the client it names (if any) and the stream
/// positioned just after the header. The caller bounds how long this may take.
pub async fn read_header(
    stream: TcpStream,
) -> Result<(Option<SocketAddr>, ProxiedStream), ProxyHeaderError> {
    let (mut reader, writer) = stream.into_split();
    let mut buffer = Vec::with_capacity(512);
    loop {
        let read = (&mut reader)
            .take((MAX_HEADER_BYTES - buffer.len()) as u64)
            .read_buf(&mut buffer)
            .await?;
        if read == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        if let Some(header) = parse(&buffer)? {
            let after_header = buffer.split_off(header.len);
            let reader = Cursor::new(after_header).chain(reader);
            return Ok((header.source, tokio::io::join(reader, writer)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Command, Protocol, Type};

    const REQUEST: &[u8] = b"GET /track HTTP/1.1\r\nHost: edge\r\n\r\n";

    fn v2_header(command: Command, addresses: v2::Addresses) -> Vec<u8> {
        Builder::with_addresses(v2::Version::Two | command, Protocol::Stream, addresses)
            .write_tlv(Type::NoOp, b"padding")
            .unwrap()
            .build()
            .unwrap()
    }

    #[test]
    fn a_v1_header_names_the_client_and_its_length() {
        let mut input = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 80\r\n".to_vec();
        let len = input.len();
        input.extend_from_slice(REQUEST);
        let header = parse(&input).unwrap().unwrap();
        assert_eq!(header.len, len);
        assert_eq!(header.source, Some("203.0.113.7:51234".parse().unwrap()));

        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n\x16\x03\x01";
        let header = parse(v6).unwrap().unwrap();
        assert_eq!(header.source, Some("[2001:db8::7]:4000".parse().unwrap()));
    }

    #[test]
    fn a_v2_header_with_tlvs_names_the_client_and_its_length() {
        let source: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let destination: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let mut input = v2_header(Command::Proxy, (source, destination).into());
        let len = input.len();
        input.extend_from_slice(b"\x16\x03\x01 a TLS client hello");
        let header = parse(&input).unwrap().unwrap();
        assert_eq!(
            header,
            ProxyHeader {
                len,
                source: Some(source)
            }
        );
    }

    #[test]
    fn health_checks_of_the_balancer_name_no_client() {
        let local = v2_header(Command::Local, v2::Addresses::Unspecified);
        assert_eq!(parse(&local).unwrap().unwrap().source, None);
        let unknown = b"PROXY UNKNOWN\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(unknown).unwrap().unwrap(),
            ProxyHeader {
                len: 15,
                source: None
            }
        );
    }

    #[test]
    fn a_partial_header_asks_for_more() {
        let full = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 80\r\n";
        for cut in [1, 5, 20, full.len() - 1] {
            assert!(parse(&full[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let v2 = v2_header(Command::Proxy, v2::Addresses::Unspecified);
        for cut in [3, 12, 16, v2.len() - 1] {
            assert!(parse(&v2[..cut]).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        let cases: [&[u8]; 5] = [
            REQUEST,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PROXY TCP4 999.0.113.7 192.0.2.1 51234 80\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 51234\r\n",
            b"PROXY SCTP 203.0.113.7 192.0.2.1 1 2\r\n",
        ];
        for input in cases {
            let err = parse(input).unwrap_err();
            assert!(
                matches!(err, ProxyHeaderError::Invalid(_)),
                "{:?}: {err}",
                String::from_utf8_lossy(input)
            );
        }
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(parse(&endless).is_err());
    }

    #[tokio::test]
    async fn the_stream_goes_on_right_after_the_header() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            // In two writes, so the header arrives in pieces.
            stream.write_all(b"PROXY TCP4 203.0.113.7 ").await.unwrap();
            stream.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let rest = [b"192.0.2.1 51234 80\r\n".as_slice(), REQUEST].concat();
            stream.write_all(&rest).await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let (stream, _) = listener.accept().await.unwrap();
        let (source, mut stream) = read_header(stream).await.unwrap();
        assert_eq!(source, Some("203.0.113.7:51234".parse().unwrap()));
        let mut request = vec![0; REQUEST.len()];
        stream.read_exact(&mut request).await.unwrap();
        assert_eq!(request, REQUEST);
        stream.write_all(b"answer").await.unwrap();
        drop(stream);
        assert_eq!(client.await.unwrap(), b"answer");
    }
}
