//! `floor`: the least one replicated, durable write costs on this machine — the line
//! under the `ipam` rows at one client, measured in the same run.
//!
//! Three "nodes", each a thread of this process with its own file (preallocated, as
//! berth's log segments are) on the filesystem the clusters' data directories are on,
//! talking over loopback TCP with blocking sockets. The client sends 200 bytes to the
//! leader; the leader sends them to both followers, then writes and `fdatasync`s its
//! own copy; each follower writes and `fdatasync`s its copy and answers one byte; the
//! leader answers the client once its own copy and one follower's are durable — two of
//! three, as Raft commits. No consensus, no encoding, no state machine, no HTTP: what a
//! system spends above this line is its own; what is below is the machine's (its
//! disk's flushes, its scheduler's wake-ups, its loopback).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Latencies;

/// Bytes per write: about one IP allocation's log entry.
const MSG: usize = 200;
/// Each node's file: written round and round.
const FILE_BYTES: u64 = 64 << 20;

/// One node's file and where its next write goes.
struct Copy {
    file: File,
    at: u64,
}

impl Copy {
    fn create(dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(name);
        let file = File::options().create(true).truncate(true).read(true).write(true).open(&path)?;
        // SAFETY: a valid open descriptor and a length within off_t.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, FILE_BYTES as libc::off_t) };
        if rc != 0 {
            file.set_len(FILE_BYTES)?;
        }
        file.sync_all()?;
        Ok(Self { file, at: 0 })
    }

    /// Appends `buf` and waits until it is durable.
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.at + buf.len() as u64 > FILE_BYTES {
            self.at = 0;
        }
        self.file.write_all_at(buf, self.at)?;
        self.at += buf.len() as u64;
        self.file.sync_data()
    }
}

fn accept(listener: &TcpListener) -> io::Result<TcpStream> {
    let (s, _) = listener.accept()?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn connect(to: std::net::SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(to)?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A follower: each message durable (without a copy: kept nowhere), then one byte
/// back; ends when the other side hangs up.
fn follower(listener: TcpListener, mut copy: Option<Copy>) -> io::Result<()> {
    let mut s = accept(&listener)?;
    let mut buf = [0u8; MSG];
    while s.read_exact(&mut buf).is_ok() {
        if let Some(copy) = &mut copy {
            copy.write(&buf)?;
        }
        s.write_all(&[1])?;
    }
    Ok(())
}

/// Reads whatever answers have arrived from the followers, blocking until follower
/// answers cover round `round` on at least one of them.
fn wait_first(followers: &mut [TcpStream; 2], acked: &mut [u64; 2], round: u64) -> io::Result<()> {
    while acked.iter().all(|a| *a < round) {
        let mut fds = [
            libc::pollfd { fd: followers[0].as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: followers[1].as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfd structs for the length passed.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (k, fd) in fds.iter().enumerate() {
            if fd.revents != 0 {
                let mut got = [0u8; 64];
                let n = followers[k].read(&mut got)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                acked[k] += n as u64;
            }
        }
    }
    Ok(())
}

/// The leader: sends, writes its own copy, waits for one follower; ends when the
/// client hangs up.
fn leader(listener: TcpListener, mut followers: [TcpStream; 2], mut copy: Copy) -> io::Result<()> {
    let mut client = accept(&listener)?;
    let mut buf = [0u8; MSG];
    let (mut round, mut acked) = (0, [0u64; 2]);
    while client.read_exact(&mut buf).is_ok() {
        round += 1;
        for f in &mut followers {
            f.write_all(&buf)?;
        }
        copy.write(&buf)?;
        wait_first(&mut followers, &mut acked, round)?;
        client.write_all(&[1])?;
    }
    Ok(())
}

/// What one client measured, waiting for each answer (the floor, its hop, an HTTP
/// round trip): seconds, and a latency per round trip.
pub struct OneClient {
    pub secs: f64,
    pub lat: Latencies,
}

impl OneClient {
    /// The mean round trip in µs: what the rate at one client is the inverse of.
    pub fn cycle_us(&self) -> f64 {
        self.secs * 1e6 / (self.lat.len() as f64).max(1.0)
    }
}

/// Runs one client against the three threads for `secs`, their files in `dir`.
pub fn measure(dir: &Path, secs: f64) -> Result<OneClient> {
    let listen = || TcpListener::bind("127.0.0.1:0").context("cannot listen on loopback for the floor");
    let (f1, f2, l) = (listen()?, listen()?, listen()?);
    let addrs = [f1.local_addr()?, f2.local_addr()?, l.local_addr()?];
    let (c1, c2, c0) = (Copy::create(dir, "floor-1")?, Copy::create(dir, "floor-2")?, Copy::create(dir, "floor-0")?);
    let threads =
        [std::thread::spawn(move || follower(f1, Some(c1))), std::thread::spawn(move || follower(f2, Some(c2))), {
            // The listeners' backlogs hold these connections until accepted.
            let followers = [connect(addrs[0])?, connect(addrs[1])?];
            std::thread::spawn(move || leader(l, followers, c0))
        }];
    run_client(addrs[2], secs, threads)
}

/// The floor's client round trip alone: the same 200 bytes to a thread that answers
/// one byte at once — what the floor spends on its client's hop, for `secs`.
pub fn hop(secs: f64) -> Result<OneClient> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot listen on loopback for the hop")?;
    let at = l.local_addr()?;
    run_client(at, secs, [std::thread::spawn(move || follower(l, None))])
}

/// One client writing to `to` and waiting for each answer for `secs`; then it hangs up
/// and joins `threads`.
fn run_client<const N: usize>(
    to: std::net::SocketAddr,
    secs: f64,
    threads: [std::thread::JoinHandle<io::Result<()>>; N],
) -> Result<OneClient> {
    let mut client = connect(to)?;
    let (mut lat, mut ack) = (Latencies::default(), [0u8; 1]);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let buf = [7u8; MSG];
    while Instant::now() < end {
        let t = Instant::now();
        client.write_all(&buf)?;
        client.read_exact(&mut ack)?;
        lat.push(t.elapsed());
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(client);
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a floor thread panicked"))??;
    }
    Ok(OneClient { secs, lat })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_is_on_all_three_copies_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = measure(dir.path(), 0.3).unwrap();
        assert!(!f.lat.is_empty());
        assert!(f.lat.quantile(0.5) > 0.0);
        let len = f.lat.len() * MSG;
        for name in ["floor-0", "floor-1", "floor-2"] {
            let bytes = std::fs::read(dir.path().join(name)).unwrap();
            assert!(bytes[..len].iter().all(|b| *b == 7), "{name}: a write is missing");
            assert!(bytes[len..len + MSG].iter().all(|b| *b == 0), "{name}: more writes than answers");
        }
    }

    #[test]
    fn the_hop_alone_is_answered_and_writes_nothing() {
        let h = hop(0.2).unwrap();
        assert!(!h.lat.is_empty());
        assert!(h.lat.quantile(0.5) > 0.0);
    }
}
