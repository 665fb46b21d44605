//! The heap allocator's arenas.
//!
//! glibc's allocator gives each thread an arena (up to eight a core) and
//! keeps what is freed in the arena it came from, returning memory to the
//! system only from the top of an arena's heap. Free memory stayed
//! resident, scattered over 16 arenas on two cores (likely because a
//! session's task moves between worker threads, learning is applied on
//! the store's blocking threads, which come and go, and each frees into
//! the arena a block came from; this part was not traced). Relaying
//! 20,000 4 KiB messages at a time through the daemon (`smtp-source -d -s
//! 20 -l 4096`, a new Message-ID each), RSS grew 0.8-1.2 KB a message
//! without levelling off: 228 MiB after 200,000 messages, 683 MiB after
//! 800,000, with 123 MiB of it in use (`malloc_stats`). With the arenas
//! capped at the number of cores by [`limit_arenas`]: 110 MiB and 230 MiB
//! (109 MiB in use). The README's "Round of 2026-12-03, fourth" has the
//! figures.

/// Cap the allocator's arenas at the number of cores (at least two;
/// glibc's default is eight a core). Call it before the runtime starts its
/// threads: the cap applies to arenas created afterwards. An admin's own
/// setting wins: with `MALLOC_ARENA_MAX` in the environment, or
/// `glibc.malloc.arena_max` in `GLIBC_TUNABLES`, nothing is changed. True
/// when the cap was set; false where the allocator is not glibc's or the
/// admin set one.
pub fn limit_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if admin_set_arenas() {
            return false;
        }
        // SAFETY: mallopt takes plain integers and may be called at any
        // time.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arena_cap()) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Whether the environment already sets glibc's arena limit.
fn admin_set_arenas() -> bool {
    std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"))
}

/// The cap [`limit_arenas`] sets: the number of cores, at least two.
pub fn arena_cap() -> libc::c_int {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    /// glibc's own report of its heaps (`malloc_info`), one `<heap nr=`
    /// element an arena.
    fn arenas_in_use() -> usize {
        let mut buf: *mut libc::c_char = std::ptr::null_mut();
        let mut len: libc::size_t = 0;
        // SAFETY: open_memstream gets valid out-pointers; the stream is
        // closed before `buf` is read, and `buf` is freed once read.
        unsafe {
            let f = libc::open_memstream(&mut buf, &mut len);
            assert!(!f.is_null());
            assert_eq!(libc::malloc_info(0, f), 0);
            libc::fclose(f);
            let xml = std::slice::from_raw_parts(buf.cast::<u8>(), len);
            let n = String::from_utf8_lossy(xml).matches("<heap nr=").count();
            libc::free(buf.cast());
            n
        }
    }

    /// Threads the test starts: more than the cap, by eight.
    fn threads() -> usize {
        usize::try_from(arena_cap()).unwrap() + 8
    }

    /// Start [`threads`] threads that each allocate while all of them are
    /// alive, and return how many arenas glibc then has.
    fn arenas_after_threads() -> usize {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads()));
        let threads: Vec<_> = (0..threads())
            .map(|_| {
                let b = barrier.clone();
                std::thread::spawn(move || {
                    let held: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 4096]).collect();
                    b.wait();
                    held.len()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 64);
        }
        arenas_in_use()
    }

    /// The cap is measured in a fresh process (this test binary run again
    /// with one test selected), since a process's arenas, once made, stay.
    /// Without the cap the same threads make more arenas than the cap.
    #[test]
    fn arenas_stay_within_the_cap() {
        const CHILD: &str = "MISDIRECT_ARENA_CHILD";
        if let Ok(mode) = std::env::var(CHILD) {
            match mode.as_str() {
                "capped" => assert!(limit_arenas()),
                // MALLOC_ARENA_MAX is set: the admin's limit stays.
                "admin" => assert!(!limit_arenas()),
                _ => {}
            }
            println!("ARENAS={}", arenas_after_threads());
            return;
        }
        let run = |mode: &str, admin_max: Option<usize>| -> usize {
            let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
            cmd.env_remove("MALLOC_ARENA_MAX")
                .env_remove("GLIBC_TUNABLES");
            if let Some(n) = admin_max {
                cmd.env("MALLOC_ARENA_MAX", n.to_string());
            }
            let out = cmd
                .args([
                    "--exact",
                    "memory::tests::arenas_stay_within_the_cap",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, mode)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let stdout = String::from_utf8_lossy(&out.stdout);
            // libtest prints the test's name on the same line.
            let (_, n) = stdout
                .split_once("ARENAS=")
                .unwrap_or_else(|| panic!("no count in {stdout}"));
            let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap()
        };
        let cap = usize::try_from(arena_cap()).unwrap();
        let capped = run("capped", None);
        let free = run("uncapped", None);
        assert!(capped <= cap, "{capped} arenas with a cap of {cap}");
        assert!(free > cap, "only {free} arenas without a cap of {cap}");
        // An admin's MALLOC_ARENA_MAX of cap + 4 is kept, not lowered.
        let admin = run("admin", Some(cap + 4));
        assert!(
            admin > cap && admin <= cap + 4,
            "{admin} arenas with MALLOC_ARENA_MAX={} (cap {cap})",
            cap + 4
        );
    }
}
