//! Live logs: the output of running builds, as the daemon sends it on
//! cuirass's own connection (`@ build-log PID LEN` frames, with
//! `multiplexed-build-output`), appended to a plain file per derivation,
//! `LOGDIR/live/NAME.drv.log`, while the build runs.  `/build/ID/log/raw`
//! follows that file until the build ends ([`super::serve`]), and the
//! details page shows its tail.  guix-daemon's own file of a running
//! build is gzip, whose compressor holds back what it has not flushed,
//! so it cannot show the last lines.
//!
//! Memory stays bounded: what arrives in one read of the daemon socket
//! goes straight to the file (the loop caps that read), and only the open
//! files of running builds are kept.  The file goes when the build ends:
//! its log is then the daemon's, copied per build ([`super::copy`]); a
//! client still reading it keeps its open file.

use super::Places;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;

pub struct LiveLogs {
    places: Places,
    files: HashMap<String, File>,
}

impl LiveLogs {
    /// Live logs under `places.copies`; those a previous process left
    /// (stopped or killed mid-build: its builds are scheduled again) go.
    pub fn new(places: Places) -> LiveLogs {
        let dir = places.live_dir();
        if dir.is_dir()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            log::warn!(target: crate::logging::BUILDING, "cannot remove old live logs in {}: {e}", dir.display());
        }
        LiveLogs {
            places,
            files: HashMap::new(),
        }
    }

    /// `derivation` started: its live file starts empty (an earlier
    /// attempt's is replaced).
    pub fn started(&mut self, derivation: &str) {
        let Some(path) = self.places.live_path(derivation) else {
            return;
        };
        let made = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| File::create(&path));
        match made {
            Ok(file) => {
                self.files.insert(derivation.to_string(), file);
            }
            Err(e) => {
                log::warn!(target: crate::logging::BUILDING, "live log of {derivation}: {}: {e}", path.display())
            }
        }
    }

    /// Appends output of a running `derivation`; a write error is logged
    /// and ends that build's live log (its daemon log is unaffected).
    pub fn append(&mut self, derivation: &str, bytes: &[u8]) {
        let Some(file) = self.files.get_mut(derivation) else {
            return;
        };
        if let Err(e) = file.write_all(bytes) {
            log::warn!(target: crate::logging::BUILDING, "live log of {derivation}: {e}");
            self.files.remove(derivation);
        }
    }

    /// `derivation` ended (or its batch was lost): its live file goes.
    pub fn finished(&mut self, derivation: &str) {
        if self.files.remove(derivation).is_some()
            && let Some(path) = self.places.live_path(derivation)
        {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Builds being written now.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildlog::serve::LogStream;
    use crate::buildlog::{Compression, Source};

    #[test]
    fn a_followed_live_log_is_sent_as_it_grows_and_ends_with_the_build() {
        let dir = std::env::temp_dir().join(format!("cuirass-live-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let places = Places::new("/var/log/guix/drvs", &dir);
        let drv = format!("/gnu/store/{}-live.drv", "a".repeat(32));
        let path = places.live_path(&drv).unwrap();
        assert!(places.live_path("/gnu/store/../etc/passwd").is_none());
        let mut live = LiveLogs::new(places.clone());
        live.started(&drv);
        live.append(&drv, b"line 1\n");
        let source = Source {
            path: path.clone(),
            compression: Compression::Plain,
            live: true,
        };
        let mut stream = LogStream::follow(&source, 7, true).unwrap();
        assert_eq!(stream.following(), Some(7));
        let mut out = Vec::new();
        stream.next(&mut out).unwrap();
        assert_eq!(out, b"7\r\nline 1\n\r\n");
        // All sent, the build runs: the stream waits.
        assert!(stream.refresh(true).unwrap());
        assert!(!stream.is_done());
        live.append(&drv, b"line 2\n");
        assert!(!stream.refresh(true).unwrap());
        out.clear();
        stream.next(&mut out).unwrap();
        assert_eq!(out, b"7\r\nline 2\n\r\n");
        // The last output is written before the build ends; then the
        // file goes, and what was written is still sent.
        live.append(&drv, b"done");
        live.finished(&drv);
        assert!(!path.exists() && live.is_empty());
        out.clear();
        while !stream.is_done() {
            assert!(!stream.refresh(false).unwrap());
            stream.next(&mut out).unwrap();
        }
        assert_eq!(out, b"4\r\ndone\r\n0\r\n\r\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
