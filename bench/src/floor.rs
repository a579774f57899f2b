//! The machine's floor for a fan-out: the same frame a subscriber receives, written over plain
//! loopback TCP to every socket by a process that does nothing else (one writer thread per vCPU, a
//! blocking `write` each), read and timed by the same kind of reader tasks in the harness. No
//! server, no WebSocket handling, no GraphQL: what is left is the kernel's cost of one small
//! message per socket and the reader's, on the same shared vCPUs. The fan-out's p99 is compared
//! with this floor's.

use std::io::{BufRead, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The writer process: `tollgate-bench floor-writer <sockets> <frame length>`. Prints its port,
/// accepts the sockets, then writes one frame to each for every line on stdin.
pub fn writer(args: &[String]) -> Result<()> {
    let sockets: usize = args.first().context("sockets")?.parse()?;
    let len: usize = args.get(1).context("frame length")?.parse()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let mut socks = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        socks.push(s);
    }
    // A text frame as the server sends it: FIN + text opcode, a 16-bit length, the payload.
    let mut frame = vec![0x81, 126, (len >> 8) as u8, len as u8];
    frame.resize(4 + len, b'x');
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = sockets.div_ceil(threads).max(1);
    for line in std::io::stdin().lock().lines() {
        if line? != "go" {
            break;
        }
        std::thread::scope(|scope| {
            for part in socks.chunks_mut(chunk) {
                let frame = &frame;
                scope.spawn(move || {
                    for s in part.iter_mut() {
                        let _ = s.write_all(frame);
                    }
                });
            }
        });
    }
    Ok(())
}

/// Runs the floor with `sockets` readers and a `frame_len`-byte payload: arrival latencies of
/// `rounds` rounds, sorted, and the CPU per message of the writer and of the readers (this
/// process), in microseconds.
pub async fn measure(
    sockets: usize,
    frame_len: usize,
    rounds: usize,
) -> Result<(Vec<Duration>, f64, f64)> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["floor-writer", &sockets.to_string(), &frame_len.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let port: u16 = out.next_line().await?.context("port")?.parse()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut readers = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut pending = 0usize;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        // Count whole frames (a read may hold a part of one, or more than one).
                        pending += n;
                        while pending >= 4 + frame_len {
                            pending -= 4 + frame_len;
                            let _ = tx.send(Instant::now());
                        }
                    }
                }
            }
        }));
    }
    let mut lat = Vec::with_capacity(sockets * rounds);
    let pid = child.id().context("the writer's pid")?;
    let cpu_before = super::cpu_seconds(pid);
    let own_before = super::cpu_seconds(std::process::id());
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        for _ in 0..sockets {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(at)) => lat.push(at.saturating_duration_since(start)),
                _ => break,
            }
        }
    }
    let per = |seconds: f64| seconds * 1e6 / lat.len().max(1) as f64;
    let cpu_us = per(super::cpu_seconds(pid) - cpu_before);
    let own_us = per(super::cpu_seconds(std::process::id()) - own_before);
    drop(stdin);
    for r in readers {
        r.abort();
    }
    let _ = child.wait().await;
    lat.sort();
    Ok((lat, cpu_us, own_us))
}
