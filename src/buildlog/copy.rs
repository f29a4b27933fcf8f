//! Per-build copies of logs, made a bounded chunk per loop turn.
//!
//! When a build finishes, its daemon log is copied as it is stored (gzip
//! or bzip2; a plain log is gzip-compressed on the way) to
//! `DIR/ID.log.gz|.bz2`, [`COPY_CHUNK`] bytes a turn, which takes a few
//! turns even for a large log, so the daemon is unlikely to rewrite the
//! file meanwhile (it would have to build the same derivation again).
//! Then the copy is decoded, [`TEXT_CHUNK`] bytes of text a turn, for its
//! last lines, written to `DIR/ID.tail`.  Files appear under their final
//! names only when complete (written as `.tmp`, then renamed), so a
//! reader finds a whole copy or none.  Builds of one derivation that
//! finish together (from several evaluations) share the copy through hard
//! links.

use super::{Compression, Decoder, Places, TAIL_BYTES, TAIL_LINES, Tail};
use crate::db::BuildId;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Stored bytes copied per turn.
pub const COPY_CHUNK: usize = 1 << 20;
/// Plain bytes compressed per turn.
pub const COMPRESS_CHUNK: usize = 256 * 1024;
/// Text decoded per turn for the tail.
pub const TEXT_CHUNK: usize = 1 << 20;
/// Copies smaller than this (stored bytes) get no `.tail` file: the
/// details page decodes them on the spot, in bounded time.
pub const SMALL_COPY: usize = 16 * 1024;
/// What a step costs at the least against a turn's budget, in bytes.
const STEP_COST: usize = 4096;

struct Job {
    builds: Vec<BuildId>,
    source: PathBuf,
}

enum Sink {
    Raw(File),
    Gzip(flate2::write::GzEncoder<File>),
}

enum Phase {
    Copying {
        src: File,
        /// Taken when the copy is closed.
        sink: Option<Sink>,
        tmp: PathBuf,
        compression: Compression,
        /// Bytes read from the source so far.
        copied: usize,
    },
    Tailing {
        src: File,
        name: PathBuf,
        decoder: Decoder,
        tail: Tail,
        input: Vec<u8>,
        used: usize,
    },
}

/// The queue of copies to make, and the one in progress.
pub struct Copier {
    places: Places,
    queue: VecDeque<Job>,
    active: Option<(Vec<BuildId>, Phase)>,
    buf: Vec<u8>,
}

impl Copier {
    pub fn new(places: Places) -> Copier {
        Copier {
            places,
            queue: VecDeque::new(),
            active: None,
            buf: Vec::new(),
        }
    }

    /// Queues a copy of `source`, the daemon's log, for `builds`; a file
    /// outside the daemon's log directory is ignored.
    pub fn push(&mut self, builds: Vec<BuildId>, source: &str) {
        let path = Path::new(source);
        if builds.is_empty() || !path.starts_with(&self.places.daemon) {
            return;
        }
        self.queue.push_back(Job {
            builds,
            source: path.to_path_buf(),
        });
    }

    /// Copies are queued or in progress: call [`Copier::step`] again.
    pub fn busy(&self) -> bool {
        self.active.is_some() || !self.queue.is_empty()
    }

    /// One bounded piece of work.  Failures are logged, naming the build
    /// and files; the build then has no copy, and its log stays the
    /// daemon's file.
    pub fn step(&mut self) {
        // A turn's worth of work: up to COPY_CHUNK bytes, each sub-step
        // counted as at least STEP_COST, so that a farm finishing many
        // builds with tiny logs copies hundreds of them per turn rather
        // than one, and a huge log still takes a bounded chunk per turn.
        let mut done = 0;
        while done < COPY_CHUNK && self.busy() {
            done += self.sub_step().max(STEP_COST);
        }
    }

    /// One step of the copy in progress (or the start of the next one);
    /// returns the bytes it read or wrote.
    fn sub_step(&mut self) -> usize {
        if self.active.is_none() {
            let Some(job) = self.queue.pop_front() else {
                return 0;
            };
            match self.begin(&job) {
                Ok(phase) => self.active = Some((job.builds, phase)),
                Err(e) => {
                    log::warn!(target: crate::logging::BUILDING, "build {}: log copy not made: {e}", job.builds[0])
                }
            }
            return 0;
        }
        let (builds, phase) = self.active.as_mut().unwrap();
        let id = builds[0];
        let mut work = 0;
        match advance(&self.places, builds, phase, &mut self.buf, &mut work) {
            Ok(None) => {}
            Ok(Some(next)) => *phase = next,
            Err(e) => {
                log::warn!(target: crate::logging::BUILDING, "build {id}: log copy: {e}");
                if let Phase::Copying { tmp, .. } = phase {
                    let _ = std::fs::remove_file(tmp);
                }
                self.active = None;
            }
        }
        // Done: every build has its copy (and its tail, if it needs one).
        if let Some((builds, _)) = &self.active
            && builds.is_empty()
        {
            self.active = None;
        }
        work
    }

    fn begin(&self, job: &Job) -> Result<Phase, String> {
        let name = job.source.display();
        let src = File::open(&job.source).map_err(|e| format!("{name}: {e}"))?;
        let compression = match Compression::of_path(&job.source.to_string_lossy()) {
            Compression::Plain => Compression::Gzip,
            c => c,
        };
        let dst = self.places.copy_path(job.builds[0], compression);
        let tmp = tmp_name(&dst);
        let file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let sink = match Compression::of_path(&job.source.to_string_lossy()) {
            Compression::Plain => Sink::Gzip(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::fast(),
            )),
            _ => Sink::Raw(file),
        };
        log::debug!(target: crate::logging::BUILDING, "build {}: copying log {name}", job.builds[0]);
        Ok(Phase::Copying {
            src,
            sink: Some(sink),
            tmp,
            compression,
            copied: 0,
        })
    }
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// One bounded piece of `phase`: None to continue it, or the phase that
/// follows it.  When the tail is written, `builds` is emptied.
fn advance(
    places: &Places,
    builds: &mut Vec<BuildId>,
    phase: &mut Phase,
    buf: &mut Vec<u8>,
    work: &mut usize,
) -> Result<Option<Phase>, String> {
    match phase {
        Phase::Copying {
            src,
            sink,
            tmp,
            compression,
            copied,
        } => {
            let chunk = match sink {
                Some(Sink::Gzip(_)) => COMPRESS_CHUNK,
                _ => COPY_CHUNK,
            };
            buf.resize(chunk, 0);
            let n = src
                .read(buf)
                .map_err(|e| format!("reading the source: {e}"))?;
            let wrote = match sink.as_mut() {
                Some(Sink::Raw(f)) => f.write_all(&buf[..n]),
                Some(Sink::Gzip(z)) => z.write_all(&buf[..n]),
                None => Ok(()),
            };
            wrote.map_err(|e| format!("{}: {e}", tmp.display()))?;
            *work += n;
            *copied += n;
            if n > 0 {
                return Ok(None);
            }
            // No fsync: it could stall the loop; a copy cut short by a
            // power loss is reported as corrupt when read.
            if let Some(Sink::Gzip(z)) = sink.take() {
                z.finish().map_err(|e| format!("{}: {e}", tmp.display()))?;
            }
            let dst = places.copy_path(builds[0], *compression);
            std::fs::rename(&*tmp, &dst).map_err(|e| format!("{}: {e}", dst.display()))?;
            for &other in &builds[1..] {
                let link = places.copy_path(other, *compression);
                if std::fs::hard_link(&dst, &link).is_err() {
                    std::fs::copy(&dst, &link).map_err(|e| format!("{}: {e}", link.display()))?;
                }
            }
            log::debug!(target: crate::logging::BUILDING, "build {}: log copied to {}", builds[0], dst.display());
            // A small copy's tail is decoded when a page asks for it:
            // cheaper than a `.tail` file per build (a bzip2 decoder
            // alone costs more than a tiny build's bookkeeping).
            if *copied < SMALL_COPY {
                builds.clear();
                return Ok(None);
            }
            let src = File::open(&dst).map_err(|e| format!("{}: {e}", dst.display()))?;
            Ok(Some(Phase::Tailing {
                src,
                name: dst,
                decoder: Decoder::new(*compression),
                tail: Tail::new(TAIL_BYTES),
                input: Vec::new(),
                used: 0,
            }))
        }
        Phase::Tailing {
            src,
            name,
            decoder,
            tail,
            input,
            used,
        } => {
            let name = name.display();
            if *used == input.len() {
                input.resize(64 * 1024, 0);
                let n = src.read(input).map_err(|e| format!("{name}: {e}"))?;
                input.truncate(n);
                *used = 0;
                *work += n;
                if n == 0 {
                    decoder
                        .finish()
                        .map_err(|e| format!("{name}: no tail: {e}"))?;
                    for &id in builds.iter() {
                        write_whole(&places.tail_path(id), tail.lines(TAIL_LINES))?;
                    }
                    builds.clear();
                    return Ok(None);
                }
            }
            buf.clear();
            *used += decoder
                .decode(&input[*used..], buf, TEXT_CHUNK)
                .map_err(|e| format!("{name}: no tail: {e}"))?;
            tail.push(buf);
            *work += buf.len();
            Ok(None)
        }
    }
}

/// Writes `bytes` to `path` through a temporary name, so that readers see
/// the whole file or none.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = tmp_name(path);
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}
