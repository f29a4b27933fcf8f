//! The API benchmark's load generator: blocking keep-alive HTTP/1.1
//! clients on plain std threads.  Threads are fine here; only the daemon
//! under test must stay single-threaded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(port: u16) -> Result<Client, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        // Requests are one small write each: no Nagle delay.
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Client {
            stream,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    pub fn send(&mut self, path: &str) -> Result<(), String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.stream
            .write_all(req.as_bytes())
            .map_err(|e| format!("GET {path}: {e}"))
    }

    /// Sends one POST with a JSON body and a bearer token.
    pub fn post(&mut self, path: &str, token: &str, body: &str) -> Result<(), String> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream
            .write_all(req.as_bytes())
            .map_err(|e| format!("POST {path}: {e}"))
    }

    /// The body of the last response [`Client::receive`] read.
    pub fn body(&self) -> &[u8] {
        let at = self.buf.windows(4).position(|w| w == b"\r\n\r\n");
        at.map_or(&[][..], |i| &self.buf[i + 4..])
    }

    /// Reads one response; returns its status and body length.
    pub fn receive(&mut self) -> Result<(u16, usize), String> {
        self.buf.clear();
        let mut chunk = [0u8; 64 * 1024];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before a response".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|e| e.to_string())?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {head:?}"))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or("no Content-Length")?;
        while self.buf.len() < head_end + length {
            let n = self.stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed within a body".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok((status, length))
    }

    /// One request, answered 200; returns its latency.
    pub fn get(&mut self, path: &str) -> Result<Duration, String> {
        let start = Instant::now();
        self.send(path)?;
        let (status, _) = self.receive()?;
        if status != 200 {
            return Err(format!("GET {path}: status {status}"));
        }
        Ok(start.elapsed())
    }
}

/// The calling thread's CPU affinity, restored on drop.
pub struct Pinned(libc::cpu_set_t);

impl Pinned {
    /// Pins the calling thread to `cpu` until the guard is dropped.
    pub fn to(cpu: usize) -> Pinned {
        // SAFETY: cpu_set_t is plain data; pid 0 is the calling thread.
        let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) };
        pin_to(cpu);
        Pinned(old)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: as above; the set was read by sched_getaffinity.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// Pins the calling thread to `cpu` (best effort).
pub fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The outcome of a closed-loop run.
pub struct Load {
    pub requests: u64,
    pub elapsed: Duration,
    /// Every request's latency, in microseconds, sorted.
    pub latencies: Vec<u32>,
}

/// `connections` threads, each with one keep-alive connection, sending
/// `path(i)` back to back until `total` requests are done or `limit` has
/// passed.  `cpu` pins the generator away from the daemon.
pub fn closed_loop(
    port: u16,
    connections: usize,
    total: u64,
    limit: Duration,
    cpu: Option<usize>,
    path: impl Fn(u64) -> String + Send + Clone + 'static,
) -> Result<Load, String> {
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (issued, stop, path) = (issued.clone(), stop.clone(), path.clone());
            std::thread::spawn(move || -> Result<Vec<u32>, String> {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                let mut client = Client::connect(port)?;
                let mut lat = Vec::with_capacity((total as usize / connections) + 1);
                loop {
                    let i = issued.fetch_add(1, Ordering::Relaxed);
                    if i >= total || stop.load(Ordering::Relaxed) {
                        return Ok(lat);
                    }
                    let d = client.get(&path(i))?;
                    lat.push(d.as_micros().min(u32::MAX as u128) as u32);
                    if i % 1024 == 0 && start.elapsed() > limit {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in threads {
        latencies.extend(t.join().map_err(|_| "load thread panicked")??);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(Load {
        requests: latencies.len() as u64,
        elapsed,
        latencies,
    })
}

/// The `q` quantile of sorted microseconds, in milliseconds.
pub fn quantile_ms(sorted: &[u32], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] as f64 / 1e3
}
