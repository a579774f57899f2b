//! A minimal WebSocket subscriber for the fan-out: the upgrade request and RFC 6455 framing written
//! by hand over a tokio `TcpStream`. The load generator shares the machine's two vCPUs with the
//! server, so what it spends reading 10,000 sockets is taken from the server under test; this
//! reader spends what the floor's readers spend (a `read`, a frame header) and still checks every
//! frame it receives.

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TEXT: u8 = 1;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

pub struct Subscriber {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Subscriber {
    /// Connects and upgrades to a WebSocket speaking `protocol`.
    pub async fn connect(addr: std::net::SocketAddr, path: &str, protocol: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        Self::upgrade(stream, addr, path, protocol).await
    }

    /// Like `connect`, from the local address `source` (port chosen by the kernel). One source
    /// address reaches one server address from at most the ephemeral range's ~28K ports; the
    /// fan-out spreads its sockets over several loopback sources (127.0.0.2, 127.0.0.3, ...: Linux
    /// routes all of 127/8 to `lo`).
    pub async fn connect_from(
        source: std::net::IpAddr,
        addr: std::net::SocketAddr,
        path: &str,
        protocol: &str,
    ) -> Result<Self> {
        let socket = match source {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket
            .bind(std::net::SocketAddr::new(source, 0))
            .with_context(|| format!("bind {source}"))?;
        let stream = socket.connect(addr).await?;
        Self::upgrade(stream, addr, path, protocol).await
    }

    async fn upgrade(
        mut stream: TcpStream,
        addr: std::net::SocketAddr,
        path: &str,
        protocol: &str,
    ) -> Result<Self> {
        stream.set_nodelay(true)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(4096);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("the server closed during the upgrade");
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {}", head.lines().next().unwrap_or(""));
        }
        buf.drain(..end);
        Ok(Subscriber { stream, buf })
    }

    /// Sends a text message (masked, as a client must).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.stream.write_all(&frame(TEXT, text.as_bytes())).await?;
        Ok(())
    }

    /// The next data frame's opcode and payload (answering pings on the way), or None once the
    /// server closed.
    pub async fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        loop {
            if let Some((opcode, start, end)) = parse(&self.buf)? {
                let payload = self.buf[start..end].to_vec();
                self.buf.drain(..end);
                match opcode {
                    PING => self.stream.write_all(&frame(PONG, &payload)).await?,
                    PONG => {}
                    CLOSE => return Ok(None),
                    _ => return Ok(Some((opcode, payload))),
                }
                continue;
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// A whole frame at the start of `buf`: its opcode and where its payload lies.
fn parse(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] & 0x80 == 0 {
        bail!("a fragmented message (the server sends whole ones)");
    }
    if buf[1] & 0x80 != 0 {
        bail!("a masked frame from the server");
    }
    let (header, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => {
            let bytes: [u8; 8] = buf[2..10].try_into().context("length")?;
            (10, usize::try_from(u64::from_be_bytes(bytes))?)
        }
        126 | 127 => return Ok(None),
        n => (2, n as usize),
    };
    Ok((buf.len() >= header + len).then_some((buf[0] & 0x0f, header, header + len)))
}

/// A client frame: FIN, the opcode, the length, a mask and the masked payload.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_whole_or_not_at_all() {
        assert_eq!(parse(&[0x81, 3, b'a', b'b']).unwrap(), None);
        assert_eq!(
            parse(&[0x81, 3, b'a', b'b', b'c']).unwrap(),
            Some((1, 2, 5))
        );
        let mut long = vec![0x81, 126, 1, 0];
        long.resize(4 + 256, b'x');
        assert_eq!(parse(&long).unwrap(), Some((1, 4, 260)));
        assert_eq!(parse(&long[..100]).unwrap(), None);
        assert!(parse(&[0x01, 1, b'a']).is_err(), "fragments are refused");
        // A client frame is masked: unmasking it gives the payload back.
        let f = frame(TEXT, b"hello");
        assert_eq!(f[1], 0x80 | 5);
        let unmasked: Vec<u8> = f[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ f[2 + i % 4])
            .collect();
        assert_eq!(unmasked, b"hello");
    }
}
