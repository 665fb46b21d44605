//! The thread that encodes and commits the learning task's changes to the
//! embedded store, at a lower CPU priority than the relay.
//!
//! Once every `[store] batch_interval` the learning task hands the records
//! it touched to be sealed and committed: about 5% of the daemon's CPU at
//! ten thousand messages a second, in one burst. On the blocking pool, at
//! the same priority as the relay's threads, that burst competed with the
//! SMTP sessions for its whole length; with it at a lower priority, fewer
//! rounds of the relay harness's c20 latency pass had a slow p99 (README,
//! "Round of 2026-12-03, sixth"). Here it runs on one thread of its own at
//! nice [`COMMIT_NICE`]: the kernel gives it the CPU the relay leaves, and
//! a smaller share of a busy machine, so commits go on (more slowly) under
//! full load.

use std::sync::mpsc;

/// Niceness of the commit thread (0 is the relay's; 19 the lowest).
pub const COMMIT_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// Handle on the commit thread; the thread ends when this is dropped.
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

/// Why a job did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum CommitterError {
    #[error("commit thread stopped")]
    Stopped,
    #[error("commit job panicked")]
    Panicked,
}

impl Committer {
    /// Start the thread. Lowering its priority is attempted and, where the
    /// system refuses it, logged and left (it then runs at the relay's).
    pub fn start() -> std::io::Result<Committer> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("misdirect-commit".into())
            .spawn(move || {
                if let Err(e) = lower_priority(COMMIT_NICE) {
                    tracing::warn!(error = %e, "Could not lower the commit thread's priority; it runs at the relay's.");
                }
                for job in rx {
                    job();
                }
            })?;
        Ok(Committer { tx })
    }

    /// Queue `f` on the commit thread at once (jobs run one at a time, in
    /// the order of these calls); the future waits for its result without
    /// holding an async worker.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> impl std::future::Future<Output = Result<R, CommitterError>> {
        let (otx, orx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = otx.send(out.map_err(|_| CommitterError::Panicked));
        });
        let sent = self.tx.send(job).is_ok();
        async move {
            if !sent {
                return Err(CommitterError::Stopped);
            }
            orx.await.map_err(|_| CommitterError::Stopped)?
        }
    }
}

/// Set the calling thread's niceness (Linux: per thread).
fn lower_priority(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS
    // and a thread id changes only that thread's niceness.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Read a thread's niceness from /proc (field 19 of its stat line).
    fn nice_of(tid: i32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(16).unwrap().parse().unwrap()
    }

    /// Jobs run in order on one thread of their own, at the lower
    /// priority, and return their results; a panicking job is reported and
    /// the thread goes on with the next one.
    #[tokio::test]
    async fn jobs_run_in_order_on_a_lower_priority_thread() {
        let c = Committer::start().unwrap();
        let me = unsafe { libc::gettid() };
        let (tid, name) = c
            .run(|| {
                let t = std::thread::current();
                (unsafe { libc::gettid() }, t.name().map(str::to_string))
            })
            .await
            .unwrap();
        assert_ne!(tid, me);
        assert_eq!(name.as_deref(), Some("misdirect-commit"));
        // (At least: a test run already niced keeps its own.)
        assert!(nice_of(tid) >= COMMIT_NICE, "{}", nice_of(tid));
        assert!(nice_of(tid) >= nice_of(me));
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let jobs: Vec<_> = (0..5)
            .map(|i| {
                let log = log.clone();
                c.run(move || {
                    log.lock().unwrap().push(i);
                    (i, unsafe { libc::gettid() })
                })
            })
            .collect();
        // Awaited last to first: they ran in the order they were queued.
        for (i, j) in jobs.into_iter().enumerate().rev() {
            assert_eq!(j.await.unwrap(), (i, tid));
        }
        assert_eq!(*log.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert!(matches!(
            c.run(|| panic!("job fails")).await,
            Err(CommitterError::Panicked)
        ));
        assert_eq!(c.run(|| 7).await.unwrap(), 7);
    }
}
